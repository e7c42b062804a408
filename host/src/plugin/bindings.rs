//! Host bindings generated from `wit/` (world `postern:filter/plugin`).

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "postern:filter/plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: { "postern:filter/types.message": crate::plugin::state::MessageData },
});
