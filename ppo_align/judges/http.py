"""A judge served over HTTP: ``POST {"prompts": [...], "responses": [...]}`` -> ``{"labels": [...]}``."""

from __future__ import annotations

import functools
import json
import os
import time

from ppo_align.errors import UserError
from ppo_align.files import digest
from ppo_align.judges.base import LABEL_HINT, Label, check_batch, parse_label

# --------------------------------------------------------------------------- HTTP judge


class HttpJudge:
    """A judge behind an HTTP endpoint.

    Each batch is one ``POST`` of ``{"prompts": [...], "responses": [...]}`` (JSON) that must answer
    ``{"labels": [...]}`` with one label per response. Connection errors, timeouts and 5xx answers are
    retried with exponential backoff; anything else unexpected (not JSON, the wrong number of labels,
    an unknown label, a 4xx) raises :class:`UserError` rather than defaulting a label.

    Args:
        url: the endpoint. A ``#fragment`` names the judge's version (``https://host/label#v3``; it is
            not sent); without one the version is a hash of the URL, so bump it when the service changes.
        batch_size: pairs per request.
        timeout: seconds per request.
        retries: extra tries after a failed request (so ``retries + 1`` requests at most per batch).
        backoff: seconds before the first retry; doubles each time.
        token_env: name of an environment variable holding a token, sent as
            ``Authorization: Bearer <token>``. Only the variable's name is kept, never the token.
        header, scheme: the header that carries the token and its prefix (``scheme=""`` sends it bare).
    """

    def __init__(self, url: str, *, batch_size: int = 32, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5, token_env: str | None = None, header: str = "Authorization",
                 scheme: str = "Bearer"):
        from urllib.parse import urldefrag, urlsplit

        self.url, fragment = urldefrag(url)
        host = urlsplit(self.url).netloc
        if urlsplit(self.url).scheme not in ("http", "https") or not host:
            raise UserError(f"judge {url!r}: not an http(s) URL; fix: write e.g. https://judge.example.com/label")
        if batch_size < 1 or timeout <= 0 or retries < 0:
            raise ValueError("batch_size >= 1, timeout > 0 and retries >= 0 are required")
        self.name = f"http:{host}"
        self.version = fragment or digest(self.url).hexdigest()[:12]
        self.batch_size, self.timeout, self.retries, self.backoff = batch_size, timeout, retries, backoff
        self.token_env, self.header, self.scheme = token_env, header, scheme
        self._sleep = time.sleep

    def __repr__(self) -> str:
        auth = f", token_env={self.token_env!r}" if self.token_env else ""
        return f"HttpJudge({self.url!r}, version={self.version!r}{auth})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token_env:
            token = os.environ.get(self.token_env)
            if not token:
                raise UserError(f"judge {self.url}: environment variable {self.token_env} (the token) is not set; "
                                f"fix: export {self.token_env}=...")
            headers[self.header] = f"{self.scheme} {token}".strip()
        return headers

    def label(self, prompts: list[str], responses: list[str]) -> list[Label]:
        check_batch(prompts, responses)
        labels: list[Label] = []
        for start in range(0, len(responses), self.batch_size):
            labels += self._label_batch(list(prompts[start:start + self.batch_size]),
                                        list(responses[start:start + self.batch_size]), first=start)
        return labels

    def _label_batch(self, prompts: list[str], responses: list[str], *, first: int) -> list[Label]:
        body = self._post(json.dumps({"prompts": prompts, "responses": responses}).encode())
        where = f"judge {self.url}: reply to rows {first}-{first + len(responses) - 1}"
        try:
            reply = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{where} is not JSON ({_excerpt(body)}); "
                            'fix: the service must answer {"labels": [...]}') from None
        raw = reply.get("labels") if isinstance(reply, dict) else None
        if not isinstance(raw, list):
            raise UserError(f"{where} has no \"labels\" list ({_excerpt(body)}); "
                            'fix: the service must answer {"labels": [...]}')
        if len(raw) != len(responses):
            raise UserError(f"{where} has {len(raw)} labels for {len(responses)} responses; "
                            "fix: the service must return one label per response, in order")
        labels = [parse_label(x) for x in raw]
        bad = [raw[i] for i, x in enumerate(labels) if x is None]
        if bad:
            raise UserError(f"{where} has unknown label {bad[0]!r}; fix: labels must be {LABEL_HINT}")
        return labels  # type: ignore[return-value]

    def _post(self, data: bytes) -> bytes:
        import http.client
        import urllib.error
        import urllib.request

        headers = self._headers()
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with _opener_without_redirects().open(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                if 300 <= exc.code < 400:
                    raise UserError(f"judge {self.url}: HTTP {exc.code} redirects to {exc.headers.get('Location')!r}, "
                                    "which ppo-align does not follow (the request and its token would go to a host "
                                    "the recipe did not name); fix: use the final URL") from None
                if exc.code < 500:
                    raise UserError(f"judge {self.url}: HTTP {exc.code} {exc.reason} ({_excerpt(exc.read())}); "
                                    "fix: check the URL and, if it needs one, the token (--token-env)") from None
                problem = f"HTTP {exc.code} {exc.reason}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # incl. timeouts, resets
                reason = getattr(exc, "reason", exc)
                problem = f"timed out after {self.timeout:g}s" if isinstance(reason, TimeoutError) else str(reason)
        raise UserError(f"judge {self.url}: no answer after {self.retries + 1} tries (last: {problem}); "
                        "fix: check that the service is up, or raise its timeout")


@functools.cache
def _opener_without_redirects():
    """The judge's requests go to the URL the recipe names and nowhere else."""
    import urllib.request

    class RefuseRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # urllib then raises the 3xx as an HTTPError

    return urllib.request.build_opener(RefuseRedirects)


def _excerpt(body: bytes, limit: int = 80) -> str:
    text = body.decode("utf-8", "replace").strip()
    return repr(text[:limit] + ("..." if len(text) > limit else "")) if text else "empty body"
