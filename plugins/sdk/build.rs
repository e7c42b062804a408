//! Writes the `bindings!` macro for the version of the WIT package this
//! SDK binds (read from `wit/types.wit`), so that a new patch version of
//! the contract needs no edit here: the macro's remapping always names
//! the interfaces of the WIT the SDK was built from.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let wit = manifest.join("../../wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let types = wit.join("types.wit");
    let text = std::fs::read_to_string(&types)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", types.display()));
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("package postern:filter@"))
        .and_then(|v| v.strip_suffix(';'))
        .unwrap_or_else(|| panic!("{}: no `package postern:filter@X.Y.Z;`", types.display()));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("bindings.rs");
    let macro_text = format!(
        r#"/// Generates the bindings for a plugin world, sharing this crate's types.
///
/// `path` is the `wit/` directory relative to your crate's `Cargo.toml`;
/// `world` is a world of `postern:filter`, or one of your own that
/// includes them. Brings an `export!` macro and an `exports` module into
/// scope. Interfaces the SDK does not share (a capability your world
/// includes, or your own) are generated in your crate.
#[macro_export]
macro_rules! bindings {{
    (path: $path:literal, world: $world:literal $(,)?) => {{
        $crate::__wit_bindgen::generate!({{
            path: $path,
            world: $world,
            with: {{
                "postern:filter/types@{version}": ::postern_sdk::types,
            }},
            generate_all,
            runtime_path: "postern_sdk::__rt",
        }});
    }};
}}

/// The version of the `postern:filter` package this SDK binds.
pub const WIT_VERSION: &str = "{version}";
"#
    );
    std::fs::write(&out, macro_text)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
