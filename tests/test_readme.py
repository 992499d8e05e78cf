"""README.md against the code it documents: its links, its command tables, its configuration blocks.

Why: the README is the installers' and test rigs' manual, and commands, flags and keys were added faster
than it was read again. These checks hold the parts a reader types: every ``[text](#anchor)`` leads to a
heading, every command of the three command tables is one its CLI parses, with the flags the table
shows, every CLI command has its row, and every configuration key the loaders read is in the README's
TOML blocks (which those loaders read as written).
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from agent.cli import build_parser as agent_parser
from agent.config import NOT_SECTIONS, AgentConfig, DeviceSection, load_config
from simulators.cli import _parser as simulator_parser
from verifier.cli import build_parser as verifier_parser
from verifier.settings import VerifierSettings, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The README without its fenced blocks (a ``# comment`` there is no heading, a link there no link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(text), flags=re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def test_every_internal_link_of_the_readme_leads_to_a_heading() -> None:
    text = _text()
    links = re.findall(r"\]\(#([^)\s]+)\)", _prose(text).replace("\n", " "))
    assert links, "no internal link found: the pattern no longer reads the README"
    missing = sorted(set(links) - _anchors(text))
    assert not missing, f"README links to headings that are not there: {missing}"


def test_every_file_the_readme_links_to_is_in_the_repository() -> None:
    links = re.findall(r"\]\(([^)#\s:]+)(?:#[^)]*)?\)", _prose(_text()).replace("\n", " "))
    missing = sorted(link for link in set(links) if not (README.parent / link).exists())
    assert not missing, f"README links to files that are not there: {missing}"


def test_the_slug_rule_reads_headings_as_github_does() -> None:
    """The check above is only as good as this rule: punctuation goes, hyphens and underscores stay."""
    assert _slug("Match-on-sensor readers and the verifier's policy") == (
        "match-on-sensor-readers-and-the-verifiers-policy"
    )
    assert _slug("Lockouts: who is locked out, and where") == "lockouts-who-is-locked-out-and-where"
    assert _slug("Serial modules (ZFM, R30x)") == "serial-modules-zfm-r30x"


# ---------------------------------------------------------------- the command tables

TABLES = {  # the line a table follows, and its program's parser
    "`capture-agent` (the device side):": agent_parser,
    "`capture-verifier` (the reference verifier):": verifier_parser,
    "`capture-simulator` (for test rigs": simulator_parser,
}


def _table_commands(text: str, intro: str) -> list[str]:
    """The code spans of the first cells of the table after ``intro`` (one cell may show two commands)."""
    rest = text[text.index(intro):]
    table = rest[rest.index("\n|"):]
    rows = []
    for line in table.splitlines()[1:]:
        if not line.startswith("|"):
            break
        if set(line) <= set("|- "):
            continue
        first_cell = re.split(r"(?<!\\)\|", line)[1]
        rows.extend(span.replace("\\|", "|") for span in re.findall(r"`([^`]+)`", first_cell))
    return rows


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    children = _subcommands(parser)
    if not children:
        yield path
    for name, child in children.items():
        yield from _leaves(child, (*path, name))


def _resolve(parser: argparse.ArgumentParser, words: list[str]) -> tuple[list[tuple[str, ...]], list[str]]:
    """The commands a table entry names (``enroll|verify|identify`` is three) and the words after them."""
    paths: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = [((), parser)]
    while words:
        choices = words[0].split("|")
        children = _subcommands(paths[0][1])
        if not children or not all(choice in children for choice in choices):
            break
        paths = [((*path, choice), _subcommands(node)[choice]) for path, node in paths for choice in choices]
        words = words[1:]
    return [path for path, _ in paths], words


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> set[str]:
    node = parser
    for name in path:
        node = _subcommands(node)[name]
    return {option for action in node._actions for option in action.option_strings}


def _passes_on(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> bool:
    """Whether the command hands its arguments to another program (`capture-agent simulate ...`)."""
    node = parser
    for name in path:
        node = _subcommands(node)[name]
    return any(action.nargs == argparse.REMAINDER for action in node._actions)


@pytest.mark.parametrize("intro", list(TABLES), ids=["capture-agent", "capture-verifier", "capture-simulator"])
def test_every_command_table_entry_is_a_command_with_the_flags_it_shows(intro: str) -> None:
    parser = TABLES[intro]()
    entries = _table_commands(_text(), intro)
    assert entries, f"no table after {intro!r}: the README's layout changed"
    problems = []
    for entry in entries:
        paths, rest = _resolve(parser, entry.split())
        if paths == [()]:
            problems.append(f"{entry!r}: no such command")
            continue
        for path in paths:
            if _passes_on(parser, path):
                continue
            known = _options(parser, path)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(rest)):
                if flag not in known:
                    problems.append(f"{entry!r}: {' '.join(path) or 'the program'} takes no {flag}")
    assert not problems, problems


@pytest.mark.parametrize("intro", list(TABLES), ids=["capture-agent", "capture-verifier", "capture-simulator"])
def test_every_command_of_a_cli_has_its_row_in_the_readme_table(intro: str) -> None:
    parser = TABLES[intro]()
    shown = {path for entry in _table_commands(_text(), intro) for path in _resolve(parser, entry.split())[0]}
    missing = [" ".join(path) for path in _leaves(parser) if path not in shown]
    assert not missing, f"commands the README's table after {intro!r} does not show: {missing}"


def test_every_option_of_every_command_is_named_in_the_readme() -> None:
    """Not every option is in a table row (`forget --wait-s` is told in its section), but each is told."""
    text = _text()
    untold = []
    for program, build in (("capture-agent", agent_parser), ("capture-verifier", verifier_parser),
                           ("capture-simulator", simulator_parser)):
        parser = build()
        for path in _leaves(parser):
            for option in sorted(_options(parser, path)):
                if option.startswith("--") and option != "--help" and not re.search(
                    re.escape(option) + r"(?![\w-])", text
                ):
                    untold.append(f"{program} {' '.join(path)} {option}")
    assert not untold, untold


# ---------------------------------------------------------------- the configuration blocks


def _toml_blocks(text: str) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)


def _agent_block() -> str:
    return next(block for block in _toml_blocks(_text()) if "[agent]" in block)


def _verifier_block() -> str:
    """The verifier's settings block, its commented-out keys (`# key = value`) written in."""
    block = next(block for block in _toml_blocks(_text()) if "target_fmr" in block)
    return re.sub(r"^# (\w+ = )", r"\1", block, flags=re.M)


def test_the_readme_agent_config_loads_and_shows_every_key_the_agent_reads(tmp_path: Path) -> None:
    block = _agent_block()
    config_file = tmp_path / "agent.toml"
    config_file.write_text(block)
    load_config(str(config_file))  # as written: a key the agent does not read is refused here

    shown = tomllib.loads(block)
    legacy = re.search(r"^# Older configs: \[reader\] (.*)$", block, flags=re.M)
    assert legacy, "the [reader] note is gone from the README's config block"
    untold = []
    for section in fields(AgentConfig):
        if section.name in NOT_SECTIONS:
            continue
        kind = DeviceSection if section.name == "device" else type(getattr(AgentConfig(), section.name))
        assert is_dataclass(kind), section.name
        if section.name == "device":
            keys = {key for table in shown["device"] for key in table}
        elif section.name == "reader":
            keys = set(re.findall(r"\w+", legacy.group(1)))
        else:
            keys = set(shown.get(section.name, {}))
        untold += [f"[{section.name}] {key.name}" for key in fields(kind) if key.name not in keys]
    assert not untold, f"keys the agent reads that the README's config block does not show: {untold}"


def test_the_readme_verifier_settings_load_and_show_every_setting(tmp_path: Path) -> None:
    block = _verifier_block()
    settings_file = tmp_path / "verifier.toml"
    settings_file.write_text(block)
    load_settings(settings_file)  # as written: an unknown key or a bad value is refused here

    shown = set(tomllib.loads(block))
    untold = [setting.name for setting in fields(VerifierSettings) if setting.name not in shown]
    assert not untold, f"settings the verifier reads that the README's block does not show: {untold}"
