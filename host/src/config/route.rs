//! Checks of the routing-table keys of `[local]`: `virtual_alias_domains`,
//! `virtual_alias_maps` and `alias_maps`. The files themselves are read
//! (and their lines checked) when the router is built.

use super::{Config, Problem, is_hostname};

/// What is wrong with the routing-table keys, each with its key.
pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let local = &config.local;
    let locals: Vec<String> = local
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    for (i, d) in local.virtual_alias_domains.iter().enumerate() {
        let key = format!("local.virtual_alias_domains[{i}]");
        if !is_hostname(d) {
            out.push(Problem {
                key,
                message: format!("{d:?} is not a domain name"),
            });
        } else if locals.contains(&d.to_ascii_lowercase()) {
            out.push(Problem {
                key,
                message: format!(
                    "{d:?} is also in local.domains: a domain is either local or a virtual alias domain (as in Postfix)"
                ),
            });
        }
    }
    for (name, paths) in [
        ("virtual_alias_maps", &local.virtual_alias_maps),
        ("alias_maps", &local.alias_maps),
    ] {
        for (i, p) in paths.iter().enumerate() {
            if p.as_os_str().is_empty() {
                out.push(Problem {
                    key: format!("local.{name}[{i}]"),
                    message: "is empty: give the path of a file".into(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    fn with_local(lines: &str) -> String {
        MINIMAL.replace("[local]", &format!("[local]\n{lines}"))
    }

    #[test]
    fn routing_table_keys() {
        let c = load(&with_local(
            "virtual_alias_domains = [\"virtual.test\"]\nvirtual_alias_maps = [\"virtual\"]\nalias_maps = [\"aliases\"]",
        ))
        .unwrap();
        assert_eq!(c.local.virtual_alias_domains, ["virtual.test"]);
        assert_eq!(c.local.virtual_alias_maps, [PathBuf::from("virtual")]);
        assert_eq!(c.local.alias_maps, [PathBuf::from("aliases")]);
        for (line, want) in [
            (
                "virtual_alias_domains = [\"example.test\"]",
                "local.virtual_alias_domains[0]: \"example.test\" is also in local.domains",
            ),
            (
                "virtual_alias_domains = [\"not a domain\"]",
                "local.virtual_alias_domains[0]: \"not a domain\" is not a domain name",
            ),
            ("alias_maps = [\"\"]", "local.alias_maps[0]: is empty"),
            (
                "virtual_alias_maps = [\"v\", \"\"]",
                "local.virtual_alias_maps[1]: is empty",
            ),
        ] {
            let err = load(&with_local(line)).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn with_alias_maps_postmaster_may_come_from_the_files() {
        // Checked when the files are read instead.
        let text = with_local("alias_maps = [\"aliases\"]").replace(
            "postmaster = \"alice\"\nabuse = \"alice\"\n",
            "team = \"staff\"\n",
        );
        assert!(load(&text).is_ok());
        assert!(load(&MINIMAL.replace("abuse = \"alice\"\n", "")).is_err());
    }
}
