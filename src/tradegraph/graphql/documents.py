"""Small questions about parsed GraphQL documents, asked by the fast paths."""

from __future__ import annotations

from typing import Any

from graphql import FieldNode, OperationDefinitionNode, OperationType
from graphql.utilities import get_operation_ast


def sole_root_field(
    document: Any, operation_name: str | None, kind: OperationType
) -> tuple[OperationDefinitionNode, FieldNode] | None:
    """The operation and its only root field, when the operation of ``kind`` selects
    exactly one field with no directives anywhere on the way; else None."""
    op = get_operation_ast(document, operation_name)
    if op is None or op.operation is not kind or op.directives:
        return None
    selections = op.selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    node = selections[0]
    if node.directives:
        return None
    return op, node
