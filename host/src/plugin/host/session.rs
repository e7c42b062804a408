//! The `session` resource: the SMTP connection a hook is called for, lent
//! to each call and read field by field.

use wasmtime::component::Resource;

use crate::plugin::bindings::postern::filter::types;
use crate::plugin::input::SessionData;
use crate::plugin::state::HostState;

impl types::HostSession for HostState {
    fn id(&mut self, s: Resource<SessionData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&s)?.0.id.clone())
    }

    fn listener(&mut self, s: Resource<SessionData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&s)?.0.listener.clone())
    }

    fn client_ip(&mut self, s: Resource<SessionData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&s)?.0.client_ip.clone())
    }

    fn client_port(&mut self, s: Resource<SessionData>) -> wasmtime::Result<u16> {
        Ok(self.table.get(&s)?.0.client_port)
    }

    fn client_ptr(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&s)?.0.client_ptr().map(str::to_string))
    }

    fn client_rdns(&mut self, s: Resource<SessionData>) -> wasmtime::Result<types::RdnsStatus> {
        use crate::dns::Rdns;
        Ok(match &self.table.get(&s)?.0.client_rdns {
            Rdns::Confirmed(n) => types::RdnsStatus::Confirmed(n.clone()),
            Rdns::Unconfirmed(n) => types::RdnsStatus::Unconfirmed(n.clone()),
            Rdns::None => types::RdnsStatus::None,
            Rdns::Temporary => types::RdnsStatus::Temporary,
            Rdns::NotLookedUp => types::RdnsStatus::NotLookedUp,
        })
    }

    fn trusted(&mut self, s: Resource<SessionData>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&s)?.0.trusted)
    }

    fn helo(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&s)?.0.helo.clone())
    }

    fn tls(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<types::TlsInfo>> {
        Ok(self
            .table
            .get(&s)?
            .0
            .tls
            .as_ref()
            .map(|(version, cipher)| types::TlsInfo {
                version: version.clone(),
                cipher: cipher.clone(),
            }))
    }

    fn auth_user(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&s)?.0.auth_user.clone())
    }

    fn drop(&mut self, s: Resource<SessionData>) -> wasmtime::Result<()> {
        self.table.delete(s)?;
        Ok(())
    }
}
