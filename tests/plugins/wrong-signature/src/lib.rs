//! Test fixture: exports `rcpt-hook` with a WIT the host must refuse.

#![allow(missing_docs)]
// wit-bindgen's export glue uses `export_name` and unsafe ABI code.
#![allow(unsafe_code)]

wit_bindgen::generate!({ path: "wit", world: "old-plugin" });

struct Wrong;

impl exports::postern::filter::rcpt_hook::Guest for Wrong {
    fn on_rcpt(recipient: String) -> bool {
        recipient.is_empty()
    }
}

export!(Wrong);
