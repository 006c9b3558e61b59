"""Runs the openai-cookbook's ``api_request_parallel_processor.py`` (a copy the user
fetched; never part of this repository) against a local MockProvider.

``python benchmarks/_cookbook_worker.py PROCESSOR REQUESTS RESULTS URL RPM TPM``

Two things of the processor are adapted, and only those, because this machine is offline
and the mock speaks plain HTTP on 127.0.0.1:

* ``api_endpoint_from_url`` accepts ``http://`` (it matches ``^https://`` only);
* ``tiktoken.get_encoding`` returns an encoding that counts with the MockProvider's own
  tokenizer (tiktoken's files cannot be downloaded here): the processor's estimates are
  then exact for the mock, which can only help it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from typing import Any

import tiktoken

from rate_limited.testing import count_tokens


class _MockEncoding:
    def encode(self, text: str) -> list[int]:
        return [0] * count_tokens(text)


def main(processor: str, requests: str, results: str, url: str, rpm: str, tpm: str) -> None:
    spec = importlib.util.spec_from_file_location("cookbook_processor", processor)
    assert spec is not None and spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def api_endpoint_from_url(request_url: str) -> str:
        match = re.search(r"^https?://[^/]+/v\d+/(.+)$", request_url)
        assert match is not None, request_url
        return match[1]

    module.api_endpoint_from_url = api_endpoint_from_url
    tiktoken.get_encoding = lambda name: _MockEncoding()  # type: ignore[assignment]
    asyncio.run(
        module.process_api_requests_from_file(
            requests_filepath=requests,
            save_filepath=results,
            request_url=url,
            api_key="sk-bench",
            max_requests_per_minute=float(rpm),
            max_tokens_per_minute=float(tpm),
            token_encoding_name="cl100k_base",
            max_attempts=5,
            logging_level=40,
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:7])
