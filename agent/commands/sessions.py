"""`capture-agent enroll|verify|identify`: a session through the daemon's local API, on a terminal."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from agent.devices_in_use import SENSOR, DevicesInUse
from agent.options import add_common_arguments
from protocol.face_template import FACE, FINGER

if TYPE_CHECKING:
    from agent.config import AgentConfig


# What each command's --help says above its options: the exit statuses a kiosk wrapper scripts on (README).
DESCRIPTIONS = {
    "enroll": "A person enrolls at the sensor (or, with --face, the camera) through the running daemon: prompts "
    "and a progress bar, each capture quality-gated and cross-checked. Exit 0 enrolled, 2 when the session "
    "could not finish (the error: and fix: lines say why), 130 on Ctrl-C, which cancels it on the daemon.",
    "verify": "1:1 against the claimed subject through the running daemon; a step-up prompts for another finger "
    "or the face. Exit 0 accepted, 1 refused, 2 when the session could not finish, 130 on Ctrl-C.",
    "identify": "1:N: who is at the kiosk (by finger, or by face with --face), among the groups this device may "
    "act on, through the running daemon. Exit 0 identified, 1 nobody recognised, 2 when the session could not "
    "finish, 130 on Ctrl-C.",
}


def _whole_up_to(bound: str) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to the local API's ``bound`` (agent.localapi).

    Why here too: out of range, the daemon's 400 named its JSON key ("captures") with no fix, after the
    command had reached it; said at parsing, the error names the option and the fix its --help.
    """
    def whole(text: str) -> int:
        from agent import localapi

        most = getattr(localapi, bound)
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {most}")
        return value

    whole.__name__ = "count"  # argparse names the type in its own messages
    return whole


def _id_of(kind: str, *, empty_is_default: bool = False) -> Callable[[str], str]:
    """An argparse type: a subject id or group name as the verifier takes them (protocol.endpoints).

    Why here: a malformed one went through the daemon to the verifier, whose refusal came back as a session
    that had started and failed, with a fix in its wire terms ("send {\"operation\": ...}") that names no option.

    ``empty_is_default``: an empty value is taken as not given (``--group ""``: the default group, as it always
    was; :func:`run` sends no group for it, so the verifier never sees it and would refuse nothing).
    """
    def checked(text: str) -> str:
        from protocol.endpoints import ID_RULE, SUBJECT_ID

        if empty_is_default and text == "":
            return text
        if not SUBJECT_ID.fullmatch(text):  # GROUP_NAME is the same shape
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a {kind}: use {ID_RULE}")
        return text

    checked.__name__ = kind  # argparse names the type in its own messages
    return checked


def register(sub: argparse._SubParsersAction) -> None:
    for name, helptext in (
        ("enroll", "enroll a subject"),
        ("verify", "verify a claimed subject"),
        ("identify", "identify who is at the kiosk (by finger, or by face with --face)"),
    ):
        parser = sub.add_parser(name, help=f"{helptext} (through the running daemon)", description=DESCRIPTIONS[name])
        if name != "identify":
            parser.add_argument(
                "--subject", required=True, type=_id_of("subject id"),
                help="the subject's id (as enrolled: case-sensitive)",
            )
        if name == "enroll":
            parser.add_argument(
                "--captures", type=_whole_up_to("MAX_CAPTURES"), default=3,
                help="captures to consolidate, 1 to 10 (default 3)",
            )
            parser.add_argument(
                "--group", type=_id_of("group name", empty_is_default=True),
                help="the subject's group (access rules name groups; default: default)",
            )
            parser.add_argument(
                "--fingers", type=_whole_up_to("MAX_FINGERS"), default=2,
                help="fingers to enroll, 1 to 4 (default 2: step-up asks for one)",
            )
            parser.add_argument(
                "--add", action="store_true", help="add templates to an enrolled subject: the person verifies first"
            )
        parser.add_argument(
            "--reader",
            help="which device: match-on-sensor, fingerprint-image, or a [[device]] name (default: an image reader, "
            "else a match-on-sensor one)",
        )
        parser.add_argument(
            "--face", action="store_true", help="by face on the camera (a head-turn challenge) instead of a finger"
        )
        add_common_arguments(parser)
        parser.add_argument("--socket", help="the daemon's local API socket (default: [api] socket)")
        parser.set_defaults(run=run, operation=name)


def _bar(step: int, total: int, width: int = 20) -> str:
    done = int(width * step / max(total, 1))
    return f"[{'#' * done}{'.' * (width - done)}] {step}/{total}"


def run(args: argparse.Namespace) -> int:
    import httpx

    from agent.errors import TransportError
    from agent.runtime import config_from_args

    config = config_from_args(args)
    socket_path = args.socket or str(config.api.socket)
    request = {
        "operation": args.operation,
        "subject": getattr(args, "subject", None),
        "captures": getattr(args, "captures", 3),
    }
    if args.face:
        request["modality"] = FACE
    if getattr(args, "group", None):
        request["group"] = args.group
    if args.operation == "enroll":
        request.update(fingers=args.fingers, verify_first=args.add)
    if getattr(args, "reader", None):
        request["reader"] = args.reader
    transport = httpx.HTTPTransport(uds=socket_path)
    quiet_s = events_read_timeout_s(config)
    try:
        # Reading waits for the person at the sensor: minutes, not seconds (and past every wait of the daemon's).
        timeout = httpx.Timeout(10.0, read=quiet_s)
        with _terminate_as_ctrl_c(), httpx.Client(transport=transport, base_url="http://agent", timeout=timeout) as api:
            created = api.post("/sessions", json=request)
            if created.status_code != 201:
                refusal = created.json()
                print(f"error: {refusal.get('error')}", file=sys.stderr)
                if refusal.get("fix"):
                    print(f"fix: {refusal['fix']}", file=sys.stderr)
                return 2
            session = created.json()
            outcome, ended = 2, False
            held = DevicesInUse(FACE if args.face else FINGER)
            try:
                with _EventsStream(api, session["events"]) as events:
                    for event in events:
                        with _interrupts_held():  # shown and recorded as one step (see _interrupts_held)
                            outcome = _show(event, outcome)
                            held.see(event)
                            ended = ended or event["type"] in END_EVENTS
            except KeyboardInterrupt:
                if ended:  # its end is on screen already: nothing to cancel, nothing to say again
                    return outcome
                return _cancel(api, session, held.named_as_subject())
            except httpx.ReadTimeout:  # not "the agent stopped": it runs, and said nothing for longer than it waits
                print(f"error: the agent said nothing of the session for {quiet_s:g} s, longer than any of its "
                      "waits, so this command stopped waiting", file=sys.stderr)
                print("fix: check the agent is not stuck (journalctl -u capture-agent; capture-agent doctor) and that "
                      "this command reads the agent's config (--config; its [sessions] and [network] settings); "
                      "then start again", file=sys.stderr)
                return 2
            except httpx.TransportError:
                pass  # the daemon went mid-stream: said below, as a stream that ended early
            if not ended:  # the daemon was killed, or restarted: nothing said how the session ended
                print("error: the agent stopped before the session ended", file=sys.stderr)
                print("fix: start it again once the agent runs (systemctl status capture-agent)", file=sys.stderr)
            return outcome
    except httpx.TransportError as exc:
        raise TransportError(
            f"cannot reach the agent's local API at {socket_path} ({type(exc).__name__}: {exc})",
            fix=_unreachable_fix(str(socket_path)),
        ) from None


def _unreachable_fix(socket_path: str) -> str:
    """What to do about a local API socket this command could not use, from what is at its path.

    Why: one fix ("start the daemon ... the [api] group") was given for all three, while a daemon run with
    another config (a test rig's, a second kiosk's) listens on another socket, which only --config or
    --socket reaches.
    """
    import os

    if not os.path.exists(socket_path):
        return ("start the daemon (systemctl start capture-agent); if it runs, it listens elsewhere: give this "
                "command the daemon's config (--config FILE) or its socket (--socket PATH, its [api] socket)")
    if not os.access(socket_path, os.R_OK | os.W_OK):
        return ("join the socket's group, the daemon's [api] group (usermod -aG GROUP USER, then log in again), "
                "or run this command as a member")
    return "the socket is there but nobody answers on it: start the daemon again (systemctl restart capture-agent)"


@contextmanager
def _terminate_as_ctrl_c() -> Iterator[None]:
    """SIGTERM does what Ctrl-C does while a session runs: it is cancelled, and the sensor free, before exit.

    Why: a kiosk wrapper or a unit stopping this command sends SIGTERM, which ended it at once; the daemon then
    held the sensor for its 5 s grace and refused the next person "a session is running on the sensor".
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C (and SIGTERM) wait until an event has been both shown and recorded, then take effect.

    Why: a Ctrl-C landing between printing a result and noting that the session had ended cancelled a session
    that was over and printed its result a second time from the replay (seen under load, most runs). Held as
    pending signals, they are delivered when the block is left, with the state matching the screen.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_READ_ENDED = object()  # what the reader of an events stream posts when the stream has ended


class _EventsStream:
    """A session's events (parsed), read from its stream on a thread of their own while this, the main thread,
    waits for the next one or for a signal in one ``select``: Ctrl-C (and SIGTERM) are acted on at once, whenever
    they land. A read timeout or transport error of the stream is raised here, in the main thread.

    Why: the main thread read the stream itself, blocked in the socket's wait. A Ctrl-C landing after Python's last
    look for signals and before that wait began (a window a loaded machine's scheduler widens) was only noted:
    its KeyboardInterrupt waited for the next event, and a person at the sensor who gave up could wait for none,
    so the command sat silent until the read timeout (minutes), holding the sensor. Here the signal also writes to
    a wakeup socket the wait watches (:func:`signal.set_wakeup_fd`), so a Ctrl-C that came before the wait ends
    it at once.
    """

    def __init__(self, api, url: str) -> None:
        import queue
        import socket

        self._api, self._url = api, url
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._posted, self._post = socket.socketpair()  # the reader's "an item is queued"
        self._woken, self._wake = socket.socketpair()  # a signal's wakeup
        for end in (self._posted, self._post, self._woken, self._wake):
            end.setblocking(False)
        self._previous_wakeup: int | None = None

    def __enter__(self) -> _EventsStream:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set the wakeup fd
            self._previous_wakeup = signal.set_wakeup_fd(self._wake.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._read, name="session-events", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
        # The reader may still be in its read (a cancelled session's stream ends once the daemon has ended it):
        # its posting end is left to it, and closed with it.
        for end in (self._posted, self._woken, self._wake):
            end.close()

    def _read(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)  # they are the main thread's to act on
        try:
            with self._api.stream("GET", self._url) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        self._posting(json.loads(line[6:]))
            self._posting(_READ_ENDED)
        except BaseException as exc:  # raised again in the main thread, which says it
            self._posting(exc)
        finally:
            self._post.close()

    def _posting(self, item: object) -> None:
        self._items.put(item)
        with suppress(OSError):  # full (the main thread drains it), or the main thread has left
            self._post.send(b"\0")

    def __iter__(self) -> Iterator[dict]:
        import queue
        import select

        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                # A signal's handler runs as this returns (or on its EINTR): a Ctrl-C is raised from here.
                ready, _, _ = select.select([self._posted, self._woken], [], [])
                for end in ready:
                    while True:
                        try:
                            if not end.recv(4096):
                                break
                        except BlockingIOError:
                            break
                continue
            if item is _READ_ENDED:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


# What the CLI adds to the longest silence of a session's events stream before it gives up waiting.
EVENTS_SLACK_S = 60.0
EVENTS_READ_FLOOR_S = 300.0  # never less than the wait it had before it was derived from the config


def events_read_timeout_s(config: AgentConfig) -> float:
    """How long the CLI waits for the next event of a session: past every wait the daemon makes without one.

    Why: it was 300 s, the largest ``[sessions] finger_timeout_s``, so at that setting the daemon's "no finger"
    raced the read timeout, which was reported as "the agent stopped before the session ended". The daemon ends
    every session itself: a finger waited ``finger_timeout_s``, a lift ``lift_reminder_s`` then ``finger_timeout_s``
    (with a prompt between), and a signed request at most two challenges and two calls of ``call_deadline_s``
    each (a nonce that expired is retried once). The silences are summed (generous) and the slack added.
    """
    sessions, network = config.sessions, config.network
    longest = sessions.finger_timeout_s + sessions.lift_reminder_s + 4 * network.call_deadline_s
    return max(EVENTS_READ_FLOOR_S, longest + EVENTS_SLACK_S)


END_EVENTS = ("result", "error", "cancelled")  # what ends a session's events stream
CANCEL_WAIT_S = 20.0  # a cancelled session ends when its reader's wait notices (a poll, well under a second)


def _cancel(api, session: dict, devices: str = f"{SENSOR} is") -> int:
    """Ctrl-C before the session's end was shown: cancel it on the daemon and wait until it has ended, so the
    sensor is free when we exit; if it had ended on its own meanwhile, its end is shown instead. ``devices`` is
    what the person used, named as freed (:meth:`DevicesInUse.named_as_subject`): "the camera is" for a face
    session (not "the sensor" they never touched), "the camera and the sensor are" once its step-up asked for a
    finger.

    Why: the terminal used to just close its connection. The daemon then held the
    sensor for its 5 s grace (a kiosk app may reconnect), and the next person's
    `capture-agent verify` was refused "a session is running on the sensor";
    nothing on screen said the enrollment had been abandoned.
    """
    print("\ncancelling the session...", file=sys.stderr, flush=True)
    last: dict = {}
    try:
        api.delete(f"/sessions/{session['id']}", timeout=5.0)
        with api.stream("GET", session["events"], timeout=CANCEL_WAIT_S) as stream:
            for line in stream.iter_lines():  # the session's events again, to its end
                if line.startswith("data: "):
                    last = json.loads(line[6:])
    except KeyboardInterrupt:  # a second Ctrl-C: leave now (the daemon still cancels within its grace)
        return 130
    except Exception:  # the daemon went meanwhile, or took too long: nothing more to do from here
        print(f"the agent did not confirm the cancel; {devices} free once it has", file=sys.stderr)
        return 130
    # It had ended before the cancel reached it (a result, or an error such as no finger in time): say how, not
    # "cancelled", which it was not.
    if last.get("type") in ("result", "error"):
        return _show(last, 2)
    print(f"cancelled; {devices} free for the next person", file=sys.stderr, flush=True)
    return 130


def enrollment_line(event: dict) -> str:
    """What an enrollment stored, in words: templates, face templates, or a print kept on the reader's sensor.

    Why by kind: a match-on-sensor enrollment's answer names its reader, not a count of templates (the
    print never leaves the sensor), and the line said "(None templates)".
    """
    who = f"enrolled {event.get('subject')} in group {event.get('group')}"
    if isinstance(event.get("templates"), int):
        noun = "face templates" if event.get("modality") == FACE else "templates"
        return f"{who} ({event['templates']} {noun})"
    return f"{who} (a print kept on the reader's sensor: match-on-sensor)"


def identification_lines(event: dict) -> list[str]:
    """Who was identified, in words; the weaker candidates said to be what they are.

    The verifier ranks every enrolled subject whose score passes its threshold.
    The first is the answer; the others are weaker matches that also passed, and
    are shown apart so that nobody reads "dan, ana" as two people identified.
    """
    candidates = event.get("candidates") or []
    threshold = event.get("threshold")
    if not candidates:  # what to try again with is the factor just used: a face session's is the face
        again = ("facing the camera and following its prompts; if your face is not enrolled here"
                 if event.get("modality") == FACE else "with a finger you enrolled; if you have not enrolled here")
        return ["nobody recognised: no enrolled subject of this device's groups matches",
                f"try again {again}, ask to be enrolled"]
    best, *others = candidates
    bar = f", threshold {threshold}" if threshold is not None else ""
    lines = [f"identified {best['subject']} (score {best['score']}{bar})"]
    if others:
        listed = ", ".join(f"{c['subject']} ({c['score']})" for c in others)
        lines.append(f"  weaker matches, also above the threshold but not identified: {listed}")
    return lines


# A face verification ends with the decision "step_up" only when the agent had no fingerprint reader to take the
# finger its verifier asked for (with one, the finger is asked for in the same session). It said "run capture-agent
# verify with a finger", which on this agent fails the same way: the person must go where there is a reader.
NO_READER_FOR_THE_STEP_UP = (
    "a finger is needed too, and this agent has no fingerprint reader ready to take it\n"
    "fix: verify with a finger at a kiosk that has a reader; an installer adds one here as a [[device]] "
    "(`capture-agent devices` lists what is found, `capture-agent doctor` checks it)"
)


def _show(event: dict, outcome: int) -> int:
    kind = event["type"]
    if kind == "prompt":
        print(f"  > {event['message']}", flush=True)
    elif kind == "progress":
        print(f"  {_bar(event['step'], event['total'])}", flush=True)
    elif kind == "step_up":
        factor = {FACE: "your face", FINGER: "a finger"}.get(event.get("acr_values"), "another finger")
        print(f"  the verifier asks for {factor}", flush=True)
    elif kind == "result":
        if "decision" in event:
            if event["decision"] == "step_up":  # a face session whose policy needs a finger too
                print(NO_READER_FOR_THE_STEP_UP, flush=True)
                return 1
            print(f"{event['decision']} (score {event['score']})", flush=True)
            if event["decision"] != "accept":  # what the person can do next, not only the verdict
                who = event.get("subject") or "this id"
                factor = "face" if event.get("modality") == FACE else "finger"
                print(f"not recognised as {who}: try again with a {factor} enrolled for {who} "
                      "(repeated failures lock the id out for a while)", flush=True)
            return 0 if event["decision"] == "accept" else 1
        if "candidates" in event:
            for warning in event.get("warnings", []):  # a subject's print left out: the installer's to redo
                print(f"warning: {warning['message']}\nfix: {warning['fix']}", file=sys.stderr, flush=True)
            print("\n".join(identification_lines(event)), flush=True)
            return 0 if event["candidates"] else 1
        print(enrollment_line(event))
        return 0
    elif kind == "error":
        print(f"error: {event.get('message', kind)}", file=sys.stderr)
        if event.get("fix"):
            print(f"fix: {event['fix']}", file=sys.stderr)
        return 2
    elif kind == "cancelled":  # its why is "reason" (the agent stopping, a kiosk app's cancel): it printed "cancelled"
        print(f"error: the session was cancelled: {event.get('reason') or 'by another client'}", file=sys.stderr)
        print("fix: start it again", file=sys.stderr)
        return 2
    return outcome
