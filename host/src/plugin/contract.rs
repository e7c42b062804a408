//! Which components the host loads: built against a compatible version of
//! `postern:filter`, exporting only interfaces it knows, and importing
//! only what their `[[plugin]] grants` cover. Checked at load, before
//! linking, so that the refusal names the interface (`postern check`
//! prints the same).

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::config::{Grant, PluginDef};

/// The WIT package this host speaks.
const PACKAGE: &str = "postern:filter/";

/// The minor line this host links: any `0.2.x` (wasmtime matches the
/// versions of imports and exports semver-compatibly, so a component
/// built against an older patch links against the newer definitions).
const COMPATIBLE: &str = "0.2.";

/// The interfaces a component may export.
const EXPORTS: &[&str] = &[
    "connect-hook",
    "helo-hook",
    "mail-hook",
    "rcpt-hook",
    "data-hook",
    "configure",
];

/// The interfaces a component may import, and the grant each needs
/// (`None`: every plugin may import it).
const IMPORTS: &[(&str, Option<Grant>)] = &[
    ("host", None),
    ("types", None),
    ("edit", Some(Grant::Edit)),
    ("dns", Some(Grant::Dns)),
    ("kv", Some(Grant::Kv)),
];

/// Refuses a component built against another minor line of the WIT, that
/// exports or imports `postern:filter` interfaces this host does not know,
/// or that imports a capability `def.grants` does not cover; the message
/// names the interface.
pub fn check(engine: &Engine, component: &Component, def: &PluginDef) -> anyhow::Result<()> {
    let ty = component.component_type();
    for (name, item) in ty.exports(engine) {
        let Some((iface, _)) = ours("export", name)? else {
            continue;
        };
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            anyhow::bail!("it exports `{name}` as something other than an interface");
        }
        if !EXPORTS.contains(&iface) {
            anyhow::bail!("it exports `{name}`, which this host does not know");
        }
    }
    for (name, _) in ty.imports(engine) {
        let Some((iface, _)) = ours("import", name)? else {
            continue;
        };
        let Some((_, grant)) = IMPORTS.iter().find(|(i, _)| *i == iface) else {
            anyhow::bail!("it imports `{name}`, which this host does not know");
        };
        if let Some(grant) = grant
            && !def.grants.contains(grant)
        {
            anyhow::bail!(
                "it imports `{name}`, which its grants do not cover: add `grants = [\"{}\"]` to its [[plugin]] table to allow it",
                grant.name()
            );
        }
    }
    Ok(())
}

/// `(interface, version)` of a `postern:filter` name; an error for another
/// minor line; `None` for anything else (WASI).
fn ours<'a>(dir: &str, name: &'a str) -> anyhow::Result<Option<(&'a str, &'a str)>> {
    let Some(rest) = name.strip_prefix(PACKAGE) else {
        return Ok(None);
    };
    let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
    if !version.starts_with(COMPATIBLE) {
        anyhow::bail!(
            "it {dir}s `{name}`: built against postern:filter@{version}, this host speaks @{COMPATIBLE}x"
        );
    }
    Ok(Some((iface, version)))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use crate::config::{Grant, PluginDef, Wasm};
    use crate::plugin::Runtime;
    use crate::plugin::cache::CacheSetting;

    /// A component for `world` of the WIT in `wit` (relative to the
    /// repository root), with dummy code: enough to link and type-check.
    fn component(wit: &str, world: &str, dir: &Path) -> PathBuf {
        use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
        use wit_parser::{ManglingAndAbi, Resolve};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut resolve = Resolve::default();
        let (pkg, _) = resolve.push_dir(root.join(wit)).unwrap();
        let world = resolve.select_world(&[pkg], Some(world)).unwrap();
        let mut module = wit_component::dummy_module(&resolve, world, ManglingAndAbi::Standard32);
        embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).unwrap();
        let bytes = ComponentEncoder::default()
            .module(&module)
            .unwrap()
            .validate(true)
            .encode()
            .unwrap();
        let path = dir.join(format!("{}.wasm", wit.replace('/', "_")));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn load(path: PathBuf, grants: Vec<Grant>, _dir: &Path) -> anyhow::Result<Vec<&'static str>> {
        let def = PluginDef {
            name: "t".into(),
            path,
            on_error: Default::default(),
            reuse_instances: false,
            memory_limit: crate::config::Bytes(16 << 20),
            time_limit: crate::config::Seconds(std::time::Duration::from_millis(500)),
            dns_time_limit: crate::config::Seconds(std::time::Duration::from_secs(5)),
            grants,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let wasm = Wasm {
            max_instances: 4,
            ..Wasm::default()
        };
        let runtime = rt.block_on(Runtime::new(
            &wasm,
            &CacheSetting::None,
            std::slice::from_ref(&def),
        ))?;
        let plugin = rt.block_on(async { Runtime::load(&runtime, &def).await })?;
        let hooks = plugin.hooks.names();
        drop(plugin);
        drop(Arc::try_unwrap(runtime).ok());
        Ok(hooks)
    }

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postern-contract-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_plugin_built_against_0_2_0_links_and_its_hooks_are_found() {
        // The linker defines the current 0.2.x interfaces; wasmtime
        // matches the 0.2.0 imports to them, and the host's export names
        // find the component's 0.2.0 exports.
        let dir = tmp("frozen");
        let wasm = component("tests/plugins/frozen/wit", "plugin", &dir);
        let hooks = load(wasm, vec![], &dir).unwrap();
        assert_eq!(hooks, ["connect", "helo", "mail", "rcpt", "data"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_capability_needs_its_grant() {
        let dir = tmp("grants");
        // `full` imports every capability: each needs its grant, and the
        // refusal names the first one missing.
        let wasm = component("wit", "full", &dir);
        let version = wit_version();
        for (grants, missing) in [
            (vec![], "edit"),
            (vec![Grant::Edit], "dns"),
            (vec![Grant::Edit, Grant::Dns], "kv"),
        ] {
            let e = load(wasm.clone(), grants, &dir).unwrap_err();
            let e = format!("{e:#}");
            assert!(
                e.contains(&format!(
                    "it imports `postern:filter/{missing}@{version}`, which its grants do not cover"
                )) && e.contains(&format!("grants = [\"{missing}\"]")),
                "{e}"
            );
        }
        let all = vec![Grant::Edit, Grant::Dns, Grant::Kv];
        assert_eq!(load(wasm, all, &dir).unwrap().len(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The version of the WIT package in `wit/` (what "current" means).
    fn wit_version() -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/types.wit");
        let text = std::fs::read_to_string(root).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("package postern:filter@"))
            .and_then(|v| v.strip_suffix(';'))
            .unwrap()
            .to_string()
    }
}
