"""What identifies a summarizer or an embedder, without building it."""

from __future__ import annotations

from dataclasses import dataclass

from entity_vectors import conf


def openai_identity(model: str) -> str:
    """How summaries and vectors made by an OpenAI(-compatible) model are labelled."""
    return f"openai:{model}"


@dataclass(frozen=True)
class EmbedderSpec:
    """An embedder by name, model and vector size: what a DomainVersion records."""

    name: str
    model: str
    dimensions: int

    @property
    def identity(self) -> str:
        """The label recorded with every vector it makes."""
        return openai_identity(self.model) if self.name == "openai" else self.name


def configured_embedder_spec() -> EmbedderSpec:
    """The embedder the settings choose."""
    name = conf.embedder_name()
    return EmbedderSpec(
        name=name,
        model=conf.embedding_model() if name == "openai" else "",
        dimensions=conf.embedding_dimensions(),
    )


def configured_summarizer_identity() -> str:
    """The identity the configured summarizer records, without building it."""
    return openai_identity(conf.chat_model()) if conf.summarizer_name() == "openai" else "template"
