//! SASL mechanisms as sans-IO server-side state machines (in progress).
