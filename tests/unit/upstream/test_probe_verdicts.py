"""``bastion probe``'s reading of answers, with the server replaced by a table of answers."""

from __future__ import annotations

import pytest

from bastion.cli import main
from bastion.errors import ConfigError
from bastion.upstream.probe import (
    CANARY,
    EXIT_CLEAN,
    EXIT_OPEN,
    EXIT_UNREACHABLE,
    Answer,
    Report,
    Target,
    Verdict,
    probe,
    render_table,
    to_json,
)
from bastion.upstream.vllm_api import ROUTES, VllmRoute

TARGET = Target("http", "model-server", 8000, "")
BY_NAME = {r.name: r for r in ROUTES}
SOME = [
    BY_NAME[n]
    for n in (
        "GET /health",
        "GET /v1/models",
        "POST /v1/chat/completions",
        "POST /tokenize",
        "POST /pause",
        "GET /metrics",
        "GET /v1/responses/{response_id}",
        "WS /v1/realtime",
    )
]
KEY = "sk-the-upstream-key"


class Server:
    """Answers each path from a table; records what was asked."""

    def __init__(self, plain: dict[str, Answer], keyed: dict[str, Answer] | None = None) -> None:
        self.plain = plain
        self.keyed = keyed or {}
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, target: Target, path: str, key: str | None, timeout: float) -> Answer:
        assert target == TARGET and timeout == 5.0
        self.asked.append((path, key))
        table = self.keyed if key is not None else self.plain
        return table.get(path, Answer(404))


def statuses(**by_path: int) -> dict[str, Answer]:
    return {path: Answer(status) for path, status in by_path.items()}


def verdicts(report: Report) -> dict[str, Verdict]:
    return {f.route.name: f.verdict for f in report.findings}


def run(server: Server, key: str | None = None, routes: list[VllmRoute] = SOME) -> Report:
    return probe(TARGET, key=key, routes=routes, asker=server)


VLLM_WITH_A_KEY = {
    CANARY: Answer(401),
    "/health": Answer(200),
    "/v1/models": Answer(401),
    "/v1/chat/completions": Answer(401),
    "/tokenize": Answer(405),
    "/metrics": Answer(200),
    "/v1/responses/bastion-probe": Answer(401),
    "/v1/realtime": Answer(401),
}


def test_vllm_with_a_key_leaves_tokenize_open() -> None:
    report = run(Server(VLLM_WITH_A_KEY))
    assert verdicts(report) == {
        "GET /health": Verdict.OPEN,
        "GET /v1/models": Verdict.NEEDS_KEY,
        "POST /v1/chat/completions": Verdict.NEEDS_KEY,
        "POST /tokenize": Verdict.OPEN,
        "POST /pause": Verdict.ABSENT,
        "GET /metrics": Verdict.OPEN,
        "GET /v1/responses/{response_id}": Verdict.NEEDS_KEY,
        "WS /v1/realtime": Verdict.NEEDS_KEY,
    }
    assert report.keys_before_routing and not report.keys_in_handlers
    assert [f.route.name for f in report.exposed] == ["POST /tokenize"]  # /health is info
    assert report.exit_code == EXIT_OPEN


def test_only_get_is_ever_sent_and_only_once_per_route_without_a_key() -> None:
    server = Server(VLLM_WITH_A_KEY)
    run(server, routes=list(ROUTES))
    assert [p for p, _ in server.asked] == [CANARY] + [r.sample_path() for r in ROUTES]
    assert all(key is None for _, key in server.asked)


def test_keys_checked_in_handlers_make_405_unknown() -> None:
    """llama.cpp's server: its routes check the key, so GET on a POST route is 405 anyway."""
    server = Server(statuses(**{"/v1/models": 401, "/v1/chat/completions": 405}))
    report = run(server)
    assert report.keys_in_handlers and not report.keys_before_routing
    assert verdicts(report)["POST /v1/chat/completions"] is Verdict.UNKNOWN
    assert report.exit_code == EXIT_CLEAN


def test_a_server_without_any_key_is_open_everywhere() -> None:
    answers = statuses(**{"/health": 200, "/v1/models": 200, "/v1/chat/completions": 405})
    answers["/pause"] = Answer(405)
    report = run(Server(answers))
    assert verdicts(report)["POST /v1/chat/completions"] is Verdict.OPEN
    assert verdicts(report)["POST /pause"] is Verdict.OPEN
    assert report.exit_code == EXIT_OPEN


@pytest.mark.parametrize(
    ("name", "answer", "verdict"),
    [
        ("POST /tokenize", Answer(422), Verdict.OPEN),
        ("POST /tokenize", Answer(500), Verdict.UNKNOWN),
        ("POST /tokenize", Answer(307), Verdict.UNKNOWN),
        ("POST /tokenize", Answer(failure="timeout"), Verdict.UNKNOWN),
        ("GET /metrics", Answer(405), Verdict.UNKNOWN),
        ("GET /v1/responses/{response_id}", Answer(404), Verdict.UNKNOWN),
        ("WS /v1/realtime", Answer(404), Verdict.ABSENT),
        ("WS /v1/realtime", Answer(426), Verdict.UNKNOWN),
        ("POST /pause", Answer(403), Verdict.NEEDS_KEY),
    ],
)
def test_other_answers(name: str, answer: Answer, verdict: Verdict) -> None:
    route = BY_NAME[name]
    report = run(Server({CANARY: Answer(404), route.sample_path(): answer}), routes=[route])
    assert verdicts(report) == {name: verdict}


def test_only_info_routes_open_is_a_clean_exit() -> None:
    server = Server({**VLLM_WITH_A_KEY, "/tokenize": Answer(404)})
    report = run(server)
    assert verdicts(report)["GET /metrics"] is Verdict.OPEN
    assert report.exposed == [] and report.exit_code == EXIT_CLEAN


def test_an_unreachable_server_is_asked_once() -> None:
    server = Server({CANARY: Answer(failure="connection refused")})
    report = run(server)
    assert report.exit_code == EXIT_UNREACHABLE
    assert server.asked == [(CANARY, None)]
    assert render_table(report) == "http://model-server:8000: no answer (connection refused)\n"
    assert to_json(report)["exit_code"] == EXIT_UNREACHABLE


def test_the_key_shows_what_it_opens_and_is_never_printed() -> None:
    keyed = {**VLLM_WITH_A_KEY, "/v1/models": Answer(200), "/v1/chat/completions": Answer(405)}
    keyed["/v1/realtime"] = Answer(401)  # a key this server does not take there
    report = run(Server(VLLM_WITH_A_KEY, keyed), key=KEY)
    found = {f.route.name: f.keyed_verdict for f in report.findings}
    assert found["GET /v1/models"] is Verdict.OPEN
    assert found["POST /v1/chat/completions"] is Verdict.OPEN  # 401 -> 405: the key passed
    assert found["WS /v1/realtime"] is Verdict.NEEDS_KEY
    table = render_table(report)
    assert "key refused" in table and "with key" in table
    assert KEY not in table and KEY not in str(to_json(report))
    assert to_json(report)["routes"][1]["with_key"] == {"answer": 200, "verdict": "open"}


def test_the_table_names_each_route_and_what_is_open() -> None:
    table = render_table(run(Server(VLLM_WITH_A_KEY)))
    lines = table.splitlines()
    assert lines[2].split() == ["route", "kind", "answer", "verdict"]
    assert "POST /tokenize" in table and "OPEN WITHOUT A KEY: 1" in table
    assert lines[-1].endswith("POST /tokenize")


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://10.0.0.5:8000", Target("http", "10.0.0.5", 8000, "")),
        ("https://models.example/vllm/", Target("https", "models.example", 443, "/vllm")),
        ("http://[::1]:8000", Target("http", "::1", 8000, "")),
    ],
)
def test_targets(url: str, target: Target) -> None:
    assert Target.from_url(url) == target


@pytest.mark.parametrize(
    "url",
    ["ftp://h", "10.0.0.5:8000", "http://user:pw@h", "http://h/?x=1", "http://h:99999", "http://"],
)
def test_bad_targets_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        Target.from_url(url)


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "http://127.0.0.1:1", "--key", "sk-raw-key"],
        ["probe", "http://127.0.0.1:1", "--key", "env:BASTION_PROBE_TEST_UNSET"],
        ["probe", "http://127.0.0.1:1", "--timeout", "0"],
        ["probe", "ftp://127.0.0.1:1"],
    ],
)
def test_the_command_refuses_bad_arguments_with_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("bastion: error: ")
    assert "sk-raw-key" not in error
