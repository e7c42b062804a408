//! Host bindings generated from `wit/` (world `postern:filter/plugin`).

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "postern:filter/plugin",
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
