"""Broker adapters (Deriv, Zerodha Kite, BingX) behind the ``Broker`` protocol."""

from tradegraph.brokers.adapters.bingx import BingXBroker
from tradegraph.brokers.adapters.deriv import DerivBroker, DerivClient
from tradegraph.brokers.adapters.kite import KiteBroker
from tradegraph.brokers.adapters.retry import RetryPolicy

__all__ = ["BingXBroker", "DerivBroker", "DerivClient", "KiteBroker", "RetryPolicy"]
