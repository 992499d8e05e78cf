"""Fuzz the agent's reading of the verifier's JSON answers, as agent.client and agent.verifier_api read them.

First byte: which answer. A success answer is read strictly (protocol.wire.loads,
as VerifierClient.call does) and handed to its parser through
agent.verifier_api.parsed_answer (Challenge, Decision, Identification,
Enrollment, SensorEnrollment) or agent.delivery.receipt_of (an events receipt);
what parses is turned back into what the agent passes on (``json()``,
``public()``). A refusal (status from the second byte, ``Retry-After`` up to the
first LF, then the body) goes through agent.client.problem_error, then what the
agent does with its class: a step-up's StepUp, a missing factor's grant.

Typed errors: AgentError (AnswerError, VerifierError, ...).
"""

from __future__ import annotations

import sys

import httpx

from agent.client import problem_error
from agent.delivery import receipt_of
from agent.errors import AgentError, FactorNotEnrolledError, StepUpRequiredError
from agent.verifier_api import parsed_answer
from protocol.messages import Challenge, Decision, Enrollment, Identification, StepUp
from protocol.sensor import SensorEnrollment
from protocol.wire import WireError, loads

PARSERS = (Challenge.from_json, Decision.from_json, Identification.from_json, Enrollment.from_json,
           SensorEnrollment.from_json)
PATH = "/v1/fuzz"


def _success(kind: int, body: bytes) -> None:
    try:
        data = loads(body)
    except WireError:
        return  # the client's answer_error
    if kind == len(PARSERS):
        receipt_of(data, 1)
        return
    answer = parsed_answer(PATH, PARSERS[kind], data)
    for name in ("json", "public"):
        method = getattr(answer, name, None)
        if callable(method):
            method()


def _refusal(data: bytes) -> None:
    status = 400 + data[0] % 200 if data else 400
    retry_after, _, body = data[1:].partition(b"\n")
    headers = [(b"content-type", b"application/problem+json"), (b"retry-after", retry_after.strip())]
    error = problem_error(httpx.Response(status, headers=headers, content=body))
    str(error)
    error.slug  # noqa: B018 - a property that reads the problem
    if isinstance(error, StepUpRequiredError):
        parsed_answer(PATH, StepUp.from_problem, error.problem)
    if isinstance(error, FactorNotEnrolledError):
        error.grant()


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    kind = data[0] % (len(PARSERS) + 2)
    try:
        if kind == len(PARSERS) + 1:
            _refusal(data[1:])
        else:
            _success(kind, data[1:])
    except AgentError:
        pass


if __name__ == "__main__":
    from fuzz.common import main

    main("agent_answers", TestOneInput, sys.argv)
