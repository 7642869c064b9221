"""TradeGraph: one GraphQL API for a whole trading platform."""

__version__ = "0.1.0"
