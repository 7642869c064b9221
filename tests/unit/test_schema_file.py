"""schema.graphql is the checked-in contract: it must match the code, fully described."""

from __future__ import annotations

from pathlib import Path

from graphql import GraphQLEnumType, GraphQLInputObjectType, GraphQLObjectType

from tradegraph.config import Settings
from tradegraph.graphql.schema import build_schema, export_schema

ROOT = Path(__file__).resolve().parents[2]


def test_schema_file_is_current():
    current = (ROOT / "schema.graphql").read_text()
    assert current == export_schema(Settings(env="test")), (
        "schema.graphql is stale: run `make schema` and commit it"
    )


def test_every_type_and_field_has_a_description():
    schema = build_schema(Settings(env="test"))._schema
    missing = []
    for name, gtype in schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Float", "Boolean", "ID"}:
            continue
        if not gtype.description:
            missing.append(name)
        if isinstance(gtype, GraphQLObjectType | GraphQLInputObjectType):
            for field_name, field in gtype.fields.items():
                if not field.description:
                    missing.append(f"{name}.{field_name}")
        if isinstance(gtype, GraphQLEnumType):
            pass
    assert missing == []
