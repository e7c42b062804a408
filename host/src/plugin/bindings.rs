//! Host bindings generated from `wit/` (world `postern:filter/full`: every
//! hook and every capability; [`super::contract`] refuses a plugin whose
//! imports its grants do not cover).

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "postern:filter/full",
    // Every host import answers from memory; none needs to await. (The
    // dns/kv/scan capabilities will be async and get their own rules.)
    imports: { default: trappable },
    exports: { default: async },
    with: {
        "postern:filter/types.message": crate::plugin::host::message::MessageData,
        "postern:filter/types.session": crate::plugin::host::session::SessionData,
        "postern:filter/types.envelope": crate::plugin::host::envelope::EnvelopeData,
    },
});
