"""The CLI's HTTP client and its login file."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from hangar.config.settings import ClientSettings, client_config_path, load_settings
from hangar.errors import ApiError, AuthError, ConfigError, HangarError
from hangar.hostfs import write_private

# The server waits up to ten minutes for a host's job; the client a little longer.
LONG_READ_SECONDS = 660.0

__all__ = ["LONG_READ_SECONDS", "Client", "load_client_settings", "save_login"]


def load_client_settings(flags: dict[str, Any] | None = None) -> ClientSettings:
    """Defaults < the login file < HANGAR_* environment < flags."""
    path = client_config_path()
    return load_settings(ClientSettings, file=path if path.exists() else None, flags=flags)


def save_login(settings: ClientSettings) -> Path:
    """Write the login file with mode 0600 in a 0700 directory."""
    path = client_config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = settings.model_dump(mode="json", exclude_none=True)
    write_private(path, json.dumps(data, indent=2))
    return path


def _verify(settings: ClientSettings) -> ssl.SSLContext | bool:
    if settings.ca_cert is None:
        return True
    if not settings.ca_cert.exists():
        raise ConfigError(f"CA certificate {settings.ca_cert} does not exist")
    context = ssl.create_default_context(cafile=str(settings.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Client:
    def __init__(self, settings: ClientSettings, *, need_token: bool = True) -> None:
        if need_token and not settings.token:
            raise AuthError(
                "you are not logged in",
                hint="run `hangar auth login --api URL` (or with --token TOKEN)",
            )
        headers = {"User-Agent": "hangar-cli"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self.settings = settings
        self._http = httpx.Client(
            base_url=settings.api_url.rstrip("/"),
            headers=headers,
            verify=_verify(settings),
            timeout=settings.timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise HangarError(
                f"cannot reach the Hangar API at {self.settings.api_url}: {exc}",
                hint="is `hangar server run` running, and is --api right?",
            ) from exc
        except httpx.ReadTimeout as exc:
            raise HangarError(
                f"the Hangar API at {self.settings.api_url} did not answer in time",
                hint="what was asked may still be going on: look before asking again",
            ) from exc
        except httpx.HTTPError as exc:
            raise HangarError(f"request to {self.settings.api_url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise _problem(response)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def request_long(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request the server answers once a host has done the work (a snapshot, a
        backup, a drill): it may take up to ten minutes, so the client waits as long."""
        timeout = httpx.Timeout(self.settings.timeout, read=LONG_READ_SECONDS)
        return self.request(method, path, timeout=timeout, **kwargs)

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response as it came (for protocols whose errors are answers, as RFC 8628's)."""
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HangarError(f"request to {self.settings.api_url} failed: {exc}") from exc

    def stream_lines(self, path: str, params: dict[str, str]) -> Iterator[str]:
        """The lines of a streamed (NDJSON) response, as they arrive."""
        try:
            with self._http.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _problem(response)
                yield from (line for line in response.iter_lines() if line)
        except httpx.ConnectError as exc:
            raise HangarError(
                f"cannot reach the Hangar API at {self.settings.api_url}: {exc}",
                hint="is `hangar server run` running?",
            ) from exc

    def stream_bytes(self, path: str) -> Iterator[bytes]:
        """The body of a streamed binary response (a tar), as it arrives."""
        try:
            with self._http.stream("GET", path, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _problem(response)
                yield from response.iter_bytes()
        except httpx.ConnectError as exc:
            raise HangarError(
                f"cannot reach the Hangar API at {self.settings.api_url}: {exc}",
                hint="is `hangar server run` running?",
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def paged(self, path: str, **params: Any) -> list[Any]:
        """Every item of a paginated listing."""
        items: list[Any] = []
        cursor = None
        while True:
            page = self.get(path, cursor=cursor, **params)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items


def _problem(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
        hint = body.get("hint")
    except ValueError:
        detail, hint = f"{response.status_code} {response.reason_phrase}", None
    if response.status_code == 401 and not hint:
        hint = "run `hangar auth login`"
    if response.status_code == 404 and not hint:
        hint = _where_to_look(detail)
    return ApiError(response.status_code, detail, hint=hint)


# What to run when the API answers "<noun> 'x' not found": the command that lists what exists.
_LISTINGS = (
    ("organization ", "`hangar orgs list` shows the organizations you belong to"),
    ("app ", "`hangar apps list` shows your apps (--org to pick an organization)"),
    ("machine ", "`hangar machines list --app APP` shows an app's machines"),
    ("release ", "`hangar releases --app APP` shows an app's releases"),
    ("host ", "`hangar hosts list` shows the hosts"),
    ("token ", "`hangar tokens list` shows your tokens"),
    ("secret ", "`hangar secrets list --app APP` shows an app's secrets"),
    ("certificate ", "`hangar certs list --app APP` shows an app's certificates"),
)


def _where_to_look(detail: str) -> str | None:
    for noun, hint in _LISTINGS:
        if detail.startswith(noun):
            return hint
    return None
