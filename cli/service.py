"""``bulkops token``: a bearer token for the HTTP API, signed with ``BULKOPS_JWT_SECRET``
(``service.tokens``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from cli.app import JsonOpt, emit, out


def token(
    creator: Annotated[str, typer.Option("--creator", help="The creator the token acts for (its `sub`).")],
    service: Annotated[bool, typer.Option("--service", help=(
        "A service token (the app's backend): acts for any creator, naming `creator_id` in requests."))] = False,
    ttl: Annotated[str, typer.Option("--ttl", help="How long it is valid: seconds, or 30m, 1h, 7d.")] = "1h",
    json_out: JsonOpt = False,
) -> None:
    """Print an API bearer token (HS256, signed with BULKOPS_JWT_SECRET)."""
    from config.settings import parse_duration
    from service.tokens import SERVICE_ROLE, issue_token, token_expiry
    from service.requests import RequestError

    try:
        ttl_s = parse_duration(ttl)
    except ValueError as exc:
        raise RequestError("usage", f"--ttl: {exc}") from None
    signed = issue_token(creator, service=service, ttl_s=ttl_s)
    expires_at = datetime.fromtimestamp(token_expiry(signed), UTC).isoformat().replace("+00:00", "Z")
    if json_out:
        emit({"token": signed, "creator_id": creator, "role": SERVICE_ROLE if service else "creator",
              "expires_at": expires_at})
    else:
        out.print(signed, markup=False)


def serve(
    host: Annotated[str, typer.Option("--host", help="Where the API listens.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The API's port.")] = 8000,
    prefect_port: Annotated[int, typer.Option("--prefect-port", min=1, max=65535, help=(
        "The Prefect server's port (and UI), when PREFECT_API_URL is unset."))] = 4200,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=64, help=(
        "Runs executed at once \\[default: BULKOPS_SERVE_LIMIT, 4]."))] = None,
    runner: Annotated[bool, typer.Option("--runner/--no-runner", help=(
        "Execute the runs here; --no-runner when workers of the bulkops pool do (PREFECT_API_URL)."))] = True,
) -> None:
    """Serve the HTTP API, a runner for the deployments and (without PREFECT_API_URL) a Prefect server with its UI."""
    from api.serve import ServeOptions
    from api.serve import serve as run_serve
    from cli.app import err

    code = run_serve(ServeOptions(host=host, port=port, prefect_port=prefect_port, limit=limit, runner=runner),
                     say=lambda text: err.print(text, markup=False))
    raise typer.Exit(code)
