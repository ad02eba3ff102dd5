"""Flower's configuration (read from the working directory by `celery -A app flower`).

Flower can run and revoke tasks, so it listens on this host only and asks for a password unless
told otherwise. Task names say what each task works on: `sync action · run 5a23ab01 · batch 3/12`.
A setting that cannot work stops Flower with one line naming it (entity_vectors.conf.host parses them).
"""

from entity_vectors.conf import host
from entity_vectors.exceptions import ConfigurationError

try:
    # This host only, unless FLOWER_ADDRESS says otherwise (docker compose publishes it on 127.0.0.1).
    address = host.flower_address()
    port = host.flower_port()
    # user:password (several separated by commas); Flower refuses to start without one below.
    basic_auth = host.flower_basic_auth()
    unauthenticated_api = host.flower_unauthenticated_api()
except ConfigurationError as error:
    raise SystemExit(f"flowerconfig: {error}") from None
if not basic_auth and not unauthenticated_api:
    raise SystemExit(
        "flowerconfig: set FLOWER_BASIC_AUTH=user:password (Flower can run and revoke tasks); "
        "for a throwaway local session only, FLOWER_UNAUTHENTICATED_API=true"
    )
# The task list: the name carries the domain, run and batch; the kwargs carry the ids.
tasks_columns = "name,uuid,state,received,started,runtime,worker,kwargs,result"
natural_time = False
purge_offline_workers = 300
