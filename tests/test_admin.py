"""The pipeline's pages in the Django admin, as rendered for a logged-in superuser."""

from __future__ import annotations

import html
import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from entity_vectors.models import BatchApiJob, DomainVersion, EntityFailure, SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db

ADMIN = "/admin/entity_vectors"
# An error as long as a real one can be: a provider's message with ids and URLs, on several lines.
LONG_ERROR = (
    "ProviderUnavailable: chat completion at http://127.0.0.1:1/v1/: failed after 3 attempts: "
    "Connection error (batch_6751f0a2c8e48190a0b1c2d3e4f5a6b7, run 83dc4989-dc9e-4791-9fc5-c79baee4b560) "
    + "and more " * 200
    + "\nsecond line of the error"
)


@pytest.fixture
def admin_client(client: Client) -> Client:
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def make_run(**fields: object) -> SyncRun:
    now = timezone.now()
    defaults: dict[str, object] = {"domain": "action", "start_dt": now, "finished_at": now}
    return SyncRun.objects.create(**{**defaults, **fields})


def make_job(**fields: object) -> BatchApiJob:
    return BatchApiJob.objects.create(**{"domain": "action", "status": BatchApiJob.Status.FAILED, **fields})


def make_version(**fields: object) -> DomainVersion:
    defaults: dict[str, object] = {
        "domain": "action",
        "embedding_version": 1,
        "state": DomainVersion.State.SERVING,
        "embedder": "hashing",
        "dimensions": 256,
    }
    return DomainVersion.objects.create(**{**defaults, **fields})


def make_failure(**fields: object) -> EntityFailure:
    defaults: dict[str, object] = {
        "domain": "action",
        "entity_id": "42",
        "team_id": 1,
        "failures": 3,
        "last_error": "boom",
        "last_failed_at": timezone.now(),
    }
    return EntityFailure.objects.create(**{**defaults, **fields})


def cell(page: str, column: str) -> list[str]:
    """The text of every list cell of `column` (`<td class="field-...">`)."""
    return [
        html.unescape(re.sub(r"<[^>]+>", "", text)).strip()
        for text in re.findall(rf'<t[dh] class="field-{column}[^"]*">(.*?)</t[dh]>', page, re.S)
    ]


def test_runs_and_their_batches_are_listed_read_only(
    admin_client: Client, offline: None, embedded_store: EmbeddingStore
) -> None:
    make_action(make_team())
    run = run_workflow("action")

    listing = admin_client.get(f"{ADMIN}/syncrun/")
    detail = admin_client.get(f"{ADMIN}/syncrun/{run.pk}/change/")

    assert listing.status_code == 200 and cell(listing.content.decode(), "outcome")[0].startswith(
        "Succeeded in "
    )
    assert detail.status_code == 200 and "Batches" in detail.content.decode()
    assert admin_client.get(f"{ADMIN}/syncrun/add/").status_code == 403


def test_domains_show_coverage_freshness_and_spend_and_parked_entities_can_be_unparked(
    admin_client: Client, offline: None, embedded_store: EmbeddingStore
) -> None:
    from entity_vectors.models import EntityChange

    team = make_team()
    synced = make_action(team, name="Synced")
    run_workflow("action")
    make_action(team, name="Pending")
    make_failure(entity_id=str(synced.pk), team_id=team.id, parked_at=timezone.now())

    versions = admin_client.get(f"{ADMIN}/domainversion/")
    failures = admin_client.get(f"{ADMIN}/entityfailure/")
    unparked = admin_client.post(
        f"{ADMIN}/entityfailure/",
        {"action": "unpark", "_selected_action": [EntityFailure.objects.get().pk]},
    )

    assert versions.status_code == 200
    page = versions.content.decode()
    assert cell(page, "coverage") == ["50.0%"]  # one of two live actions is covered
    assert cell(page, "pending")[0].startswith("1, oldest ")
    assert cell(page, "failures") == ["1 parked"]
    assert "Spend, 30 days" in page and cell(page, "spend") == ["$0.0000"]  # offline providers
    assert failures.status_code == 200 and cell(failures.content.decode(), "error_start") == ["boom"]
    assert unparked.status_code == 302 and not EntityFailure.objects.exists()
    assert EntityChange.objects.filter(domain="action", entity_id=str(synced.pk)).exists()


class TestReadOnlyPagesOfferNoDelete:
    """What the pipeline wrote cannot be deleted from the admin: no Delete button on a row's
    page, no delete action on the list, and the delete page refuses."""

    @pytest.mark.parametrize(
        ("model", "make"),
        [
            pytest.param("syncrun", make_run, id="runs"),
            pytest.param("domainversion", make_version, id="versions"),
            pytest.param("batchapijob", make_job, id="batch-api-jobs"),
            pytest.param("entityfailure", make_failure, id="entity-failures"),
        ],
    )
    def test_no_delete(self, admin_client: Client, model: str, make: object) -> None:
        assert callable(make)
        row = make()

        listing = admin_client.get(f"{ADMIN}/{model}/").content.decode()
        detail = admin_client.get(f"{ADMIN}/{model}/{row.pk}/change/").content.decode()
        delete_page = admin_client.get(f"{ADMIN}/{model}/{row.pk}/delete/")

        assert 'value="delete_selected"' not in listing
        assert "deletelink" not in detail and ">Delete<" not in detail
        assert "closelink" in detail  # the page's one button: Close
        assert delete_page.status_code == 403

    def test_the_failures_list_keeps_its_unpark_action_only(self, admin_client: Client) -> None:
        make_failure()

        listing = admin_client.get(f"{ADMIN}/entityfailure/").content.decode()

        actions = re.findall(
            r'<option value="([^"]+)"', listing.split('name="action"')[1].split("</select>")[0]
        )
        assert actions == ["unpark"]


class TestListsFitTheWindow:
    """The lists keep to a few short columns: a long error is its first line cut to 120
    characters (whole on the row's page), times are short, counts share one column, and the
    package's stylesheet wraps long text instead of widening the table."""

    def test_a_runs_long_error_is_cut_in_the_list_and_whole_on_its_page(self, admin_client: Client) -> None:
        run = make_run(status=SyncRun.Status.FAILED, error=LONG_ERROR, selected=28, summary_failures=7)

        listing = admin_client.get(f"{ADMIN}/syncrun/").content.decode()
        detail = admin_client.get(f"{ADMIN}/syncrun/{run.pk}/change/").content.decode()

        (shown,) = cell(listing, "error_start")
        assert len(shown) == 120 and shown.endswith("...") and LONG_ERROR.startswith(shown[:-3])
        assert "second line" not in listing and "second line of the error" in detail
        assert cell(listing, "entities") == ["28 selected, 0 inserted, 0 tombstoned, 7 failed"]
        assert "entity_vectors/admin.css" in listing

    def test_the_runs_list_has_six_short_columns(self, admin_client: Client) -> None:
        run = make_run(kind=SyncRun.Kind.FAST_LANE)
        local = timezone.localtime(run.started_at)

        listing = admin_client.get(f"{ADMIN}/syncrun/").content.decode()

        headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', listing)
        assert headers == ["run", "outcome", "started", "entities", "cost", "error_start"]
        assert cell(listing, "run") == ["action, fast lane"]
        assert cell(listing, "started") == [f"{local:%b} {local.day} {local:%H:%M}"]

    def test_a_batch_api_jobs_long_error_and_its_run(self, admin_client: Client) -> None:
        run = make_run()
        make_job(error=LONG_ERROR, run=run, requests=4999, failed={"1": "refused", "2": "refused"})

        listing = admin_client.get(f"{ADMIN}/batchapijob/").content.decode()

        (shown,) = cell(listing, "error_start")
        assert len(shown) == 120 and shown.endswith("...")
        assert cell(listing, "run_link") == [str(run.pk)[:8]]
        assert cell(listing, "requests_failed") == ["4999, 2 failed"]

    def test_a_failures_long_error_is_cut(self, admin_client: Client) -> None:
        make_failure(last_error=LONG_ERROR)

        listing = admin_client.get(f"{ADMIN}/entityfailure/").content.decode()

        (shown,) = cell(listing, "error_start")
        assert len(shown) == 120 and shown.endswith("...")

    def test_versions_say_domain_version_state_and_embedder_in_few_columns(
        self, admin_client: Client
    ) -> None:
        make_version(embedder="openai", embedding_model="text-embedding-3-small", dimensions=1536)

        listing = admin_client.get(f"{ADMIN}/domainversion/").content.decode()

        assert cell(listing, "version") == ["action v1, serving"]
        assert cell(listing, "embedder_of") == ["openai:text-embedding-3-small, 1536 dimensions"]
        assert 'id="changelist-filter"' not in listing  # a handful of rows: the room goes to the figures


class TestTheEmbedderChoiceIsExplained:
    """A version's page says where its embedder came from, instead of a bare "Explicit" box."""

    @pytest.mark.parametrize(
        ("explicit", "says"),
        [
            pytest.param(
                True, "migrate_embeddings --embedder/--model/--dimensions, given on the", id="given"
            ),
            pytest.param(
                False, "the settings&#x27; default embedder (ENTITY_VECTORS_EMBEDDER)", id="settings"
            ),
        ],
    )
    def test_the_page_says_it(self, admin_client: Client, explicit: bool, says: str) -> None:
        version = make_version(explicit=explicit)

        page = admin_client.get(f"{ADMIN}/domainversion/{version.pk}/change/").content.decode()

        assert "Embedder chosen by:" in page and says in page
        assert "Explicit" not in page


class TestCostsAsInTheCommands:
    """A cost shows with the commands' four decimals in every list and page of the admin (the
    table keeps six); an amount too small for them is not shown as free."""

    @pytest.mark.parametrize(
        ("cost", "shown"),
        [
            pytest.param(Decimal("0.004982"), "$0.0050", id="rounded"),
            pytest.param(Decimal("0.000049"), "<$0.0001", id="below-the-last-decimal"),
            pytest.param(Decimal("0"), "$0.0000", id="free"),
        ],
    )
    def test_runs_and_jobs(
        self, admin_client: Client, embedded_store: EmbeddingStore, cost: Decimal, shown: str
    ) -> None:
        run = make_run(cost_usd=cost)
        job = make_job(cost_usd=cost)

        runs = admin_client.get(f"{ADMIN}/syncrun/").content.decode()
        run_page = admin_client.get(f"{ADMIN}/syncrun/{run.pk}/change/").content.decode()
        jobs = admin_client.get(f"{ADMIN}/batchapijob/").content.decode()
        job_page = admin_client.get(f"{ADMIN}/batchapijob/{job.pk}/change/").content.decode()
        status, _ = run_command("entity_vectors_status", "--domain", "action")

        assert cell(runs, "cost") == [shown] and cell(jobs, "cost") == [shown]
        for page in (run_page, job_page):
            assert f'<div class="readonly">{shown.replace("<", "&lt;")}</div>' in page
            assert f"{cost:.6f}" not in page or cost == 0
        assert f", {shown}" in status  # the status command's line of the run
