//! Host bindings generated from `wit/` (world `postern:filter/full`: every
//! hook and every capability; [`super::contract`] refuses a plugin whose
//! imports its grants do not cover).

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "postern:filter/full",
    // The base interfaces answer from memory; the capabilities that wait
    // on the network or the disk are async, so that a guest waiting on
    // them is not running (and not charged CPU time).
    imports: {
        "postern:filter/dns": async | trappable,
        "postern:filter/kv": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "postern:filter/types.message": crate::plugin::input::MessageData,
        "postern:filter/types.session": crate::plugin::input::SessionData,
        "postern:filter/types.envelope": crate::plugin::input::EnvelopeData,
    },
});
