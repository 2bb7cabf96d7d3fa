"""Event stores: the implementations of core.eventstore.EventStore."""
