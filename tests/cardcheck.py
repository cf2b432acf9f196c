"""Reading a Teams card in tests: a structural validator for the Workflows envelope and an Adaptive
Card 1.4 inside it (the elements and properties our cards may use), the card's texts in order, and
what Markdown displays of escaped text. Used by test_card.py and test_publish.py; Microsoft's own
parser is adaptivecards.py."""

from __future__ import annotations

import re
from typing import Any

ELEMENTS = {"TextBlock", "FactSet", "Container", "ColumnSet"}
COMMON_PROPS = {"type", "id", "spacing", "separator", "isVisible", "height"}
SPACING = {"none", "small", "default", "medium", "large", "extralarge", "padding"}
ENUMS: dict[str, dict[str, set[str]]] = {
    "TextBlock": {
        "size": {"default", "small", "medium", "large", "extralarge"},
        "weight": {"default", "lighter", "bolder"},
        "color": {"default", "dark", "light", "accent", "good", "warning", "attention"},
        "fontType": {"default", "monospace"},
        "horizontalAlignment": {"left", "center", "right"},
    },
    "Container": {"style": {"default", "emphasis", "good", "attention", "warning", "accent"}},
    "ColumnSet": {"style": {"default", "emphasis", "good", "attention", "warning", "accent"}},
}
PROPS = {
    "TextBlock": {"text", "wrap", "size", "weight", "color", "isSubtle", "fontType", "maxLines", "horizontalAlignment"},
    "FactSet": {"facts"},
    "Container": {"items", "style", "verticalContentAlignment", "bleed", "minHeight"},
    "ColumnSet": {"columns", "style", "bleed", "minHeight", "horizontalAlignment"},
}


def validate_element(element: Any, where: str) -> None:
    assert isinstance(element, dict), where
    kind = element.get("type")
    assert kind in ELEMENTS, f"{where}: element type {kind!r} is not allowed in a 1.4 Workflows card"
    unknown = set(element) - COMMON_PROPS - PROPS[kind]
    assert not unknown, f"{where}: unknown properties {unknown}"
    if "spacing" in element:
        assert element["spacing"].lower() in SPACING, where
    for prop, allowed in ENUMS.get(kind, {}).items():
        if prop in element:
            assert element[prop].lower() in allowed, f"{where}: {prop}={element[prop]!r}"
    if kind == "TextBlock":
        assert isinstance(element["text"], str), where
        for flag in ("wrap", "isSubtle", "separator"):
            assert isinstance(element.get(flag, False), bool), where
    elif kind == "FactSet":
        assert isinstance(element["facts"], list) and element["facts"], where
        for fact in element["facts"]:
            assert set(fact) == {"title", "value"}, where
            assert isinstance(fact["title"], str) and isinstance(fact["value"], str), where
    elif kind == "Container":
        assert isinstance(element["items"], list), where
        for i, item in enumerate(element["items"]):
            validate_element(item, f"{where}.items[{i}]")
    elif kind == "ColumnSet":
        for i, column in enumerate(element["columns"]):
            assert column.get("type") == "Column", where
            for j, item in enumerate(column.get("items", [])):
                validate_element(item, f"{where}.columns[{i}].items[{j}]")


def validate_payload(payload: Any) -> dict[str, Any]:
    """Assert the Workflows envelope and an Adaptive Card 1.4 inside; return the card."""
    assert set(payload) == {"type", "attachments"}
    assert payload["type"] == "message"
    assert isinstance(payload["attachments"], list) and len(payload["attachments"]) == 1
    attachment = payload["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert "contentUrl" in attachment and attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    assert set(card) <= {"type", "version", "$schema", "body", "msteams"}
    assert isinstance(card["body"], list) and card["body"]
    for i, element in enumerate(card["body"]):
        validate_element(element, f"body[{i}]")
    return dict(card)


def texts(payload: dict[str, Any]) -> list[str]:
    """Every TextBlock text and fact of the card, in order."""
    out: list[str] = []

    def walk(element: dict[str, Any]) -> None:
        if element["type"] == "TextBlock":
            out.append(element["text"])
        elif element["type"] == "FactSet":
            out.extend(f"{f['title']}: {f['value']}" for f in element["facts"])
        for item in element.get("items", []):
            walk(item)

    for element in payload["attachments"][0]["content"]["body"]:
        walk(element)
    return out


def shown(markdown: str) -> str:
    """What CommonMark displays for escaped text: a backslash before punctuation disappears."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def tables(payload: dict[str, Any]) -> list[list[list[str]]]:
    """Every ColumnSet of the card read as a table: its rows, each the texts shown in its cells."""
    found: list[list[list[str]]] = []

    def walk(element: dict[str, Any]) -> None:
        if element["type"] == "ColumnSet":
            columns = [[shown(item["text"]) for item in column.get("items", [])] for column in element["columns"]]
            assert len({len(c) for c in columns}) <= 1, f"columns of unequal length: {columns}"
            found.append([list(row) for row in zip(*columns, strict=True)])
        for item in element.get("items", []):
            walk(item)

    for element in payload["attachments"][0]["content"]["body"]:
        walk(element)
    return found


def target_rows(payload: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The targets table as {name: {column: cell}}; the name column's header (the root's last
    component, or "Targets") is put back in front of each name; an empty cell ("·") reads as ""."""
    for table in tables(payload):
        header = table[0]
        if "failed" in header or "new" in header or "upload" in header:
            parent = "" if header[0] == "Targets" else header[0]
            return {
                parent + row[0]: {
                    column: ("" if cell == "·" else cell) for column, cell in zip(header[1:], row[1:], strict=True)
                }
                for row in table[1:]
            }
    return {}
