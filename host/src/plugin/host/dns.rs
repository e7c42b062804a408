//! The `dns` interface (since 0.2.2): typed lookups through the daemon's
//! resolver ([`crate::dns::lookup`]). A guest waiting on DNS is not
//! running, so the wait costs none of its CPU `time_limit`; instead one
//! call's lookups together get `dns_time_limit` of wall-clock time (the
//! call's wall-clock backstop is extended by as much), and at most
//! [`MAX_LOOKUPS`] query names.

use std::time::{Duration, Instant};

use crate::dns::{Answer, Dns, Kind, Listing};
use crate::plugin::bindings::postern::filter::dns::{
    self, ListQuery, ListResult, LookupResult, MxRecord, Query, RecordType,
};
use crate::plugin::limits::MAX_LOOKUPS;
use crate::plugin::state::HostState;

const TIME_LIMIT: &str = "time limit";

fn too_many() -> String {
    format!("more than {MAX_LOOKUPS} lookups in one call")
}

fn kind(t: RecordType) -> Kind {
    match t {
        RecordType::A => Kind::A,
        RecordType::Aaaa => Kind::Aaaa,
        RecordType::Mx => Kind::Mx,
        RecordType::Txt => Kind::Txt,
        RecordType::Ptr => Kind::Ptr,
    }
}

fn result(a: Answer) -> LookupResult {
    use crate::dns::Rdata as R;
    match a {
        Answer::Records(v) => LookupResult::Answers(
            v.into_iter()
                .map(|r| match r {
                    R::A(a) => dns::Rdata::A(a),
                    R::Aaaa(a) => dns::Rdata::Aaaa(a),
                    R::Mx(preference, exchange) => dns::Rdata::Mx(MxRecord {
                        preference,
                        exchange,
                    }),
                    R::Txt(t) => dns::Rdata::Txt(t),
                    R::Ptr(p) => dns::Rdata::Ptr(p),
                })
                .collect(),
        ),
        Answer::NxDomain => LookupResult::Nxdomain,
        Answer::NoData => LookupResult::NoData,
        Answer::Temporary(e) => LookupResult::Temporary(e),
        Answer::Invalid(e) => LookupResult::Invalid(e),
    }
}

fn listing(l: Listing) -> ListResult {
    match l {
        Listing::Listed { codes, texts } => ListResult::Listed(dns::Listing { codes, texts }),
        Listing::NotListed => ListResult::NotListed,
        Listing::Temporary(e) => ListResult::Temporary(e),
        Listing::Invalid(e) => ListResult::Invalid(e),
    }
}

impl HostState {
    /// The resolver, or why there is none (a run without a daemon:
    /// `postern check`, `postern plugin test`).
    fn resolver(&self) -> Result<std::sync::Arc<Dns>, String> {
        self.caps
            .dns
            .clone()
            .ok_or_else(|| "no resolver in this run".to_string())
    }

    /// Grants up to `n` lookups of the call's allowance (logging a
    /// refusal); how many.
    fn grant(&mut self, n: usize) -> usize {
        let granted = self.dns_budget.take(n);
        if granted < n {
            tracing::warn!(
                "{}: plugin {}: {}",
                self.context.as_deref().unwrap_or("-"),
                self.conf().map_or("?", |c| &c.label),
                too_many()
            );
        }
        granted
    }

    /// Runs the granted lookups (`work`) of `n` within the time left: each
    /// gets `Some`; those not granted, or all when the time runs out, get
    /// `None`, with why.
    async fn timed<T>(
        &mut self,
        n: usize,
        work: impl Future<Output = Vec<T>>,
    ) -> (Vec<Option<T>>, &'static str) {
        let none = || std::iter::repeat_with(|| None).take(n).collect();
        if self.dns_budget.left.is_zero() {
            return (none(), TIME_LIMIT);
        }
        let started = Instant::now();
        let done = tokio::time::timeout(self.dns_budget.left, work).await;
        self.dns_budget.left = self.dns_budget.left.saturating_sub(started.elapsed());
        match done {
            Ok(v) => {
                let mut out: Vec<Option<T>> = v.into_iter().map(Some).collect();
                out.resize_with(n, || None);
                (out, "too many")
            }
            Err(_) => {
                self.dns_budget.left = Duration::ZERO;
                (none(), TIME_LIMIT)
            }
        }
    }
}

/// Why a lookup got no answer: the time limit, or too many lookups.
fn refused(why: &str) -> LookupResult {
    if why == TIME_LIMIT {
        LookupResult::Temporary(TIME_LIMIT.into())
    } else {
        LookupResult::Invalid(too_many())
    }
}

impl dns::Host for HostState {
    async fn lookup(&mut self, name: String, type_: RecordType) -> wasmtime::Result<LookupResult> {
        let mut v = self.lookup_batch(vec![Query { name, type_ }]).await?;
        Ok(v.pop().unwrap_or(LookupResult::Invalid(too_many())))
    }

    async fn lookup_batch(&mut self, queries: Vec<Query>) -> wasmtime::Result<Vec<LookupResult>> {
        let resolver = match self.resolver() {
            Ok(r) => r,
            Err(e) => {
                return Ok(queries
                    .iter()
                    .map(|_| LookupResult::Temporary(e.clone()))
                    .collect());
            }
        };
        let granted = self.grant(queries.len());
        let work = futures_util::future::join_all(
            queries[..granted]
                .iter()
                .map(|q| resolver.query(&q.name, kind(q.type_))),
        );
        let (answers, why) = self.timed(queries.len(), work).await;
        Ok(answers
            .into_iter()
            .map(|a| a.map_or_else(|| refused(why), result))
            .collect())
    }

    async fn reverse(&mut self, ip: String) -> wasmtime::Result<LookupResult> {
        let resolver = match self.resolver() {
            Ok(r) => r,
            Err(e) => return Ok(LookupResult::Temporary(e)),
        };
        let granted = self.grant(1);
        let work = async {
            if granted == 0 {
                return Vec::new();
            }
            vec![resolver.reverse(&ip).await]
        };
        let (mut answers, why) = self.timed(1, work).await;
        Ok(answers.pop().flatten().map_or_else(|| refused(why), result))
    }

    async fn check_lists(&mut self, queries: Vec<ListQuery>) -> wasmtime::Result<Vec<ListResult>> {
        let resolver = match self.resolver() {
            Ok(r) => r,
            Err(e) => {
                return Ok(queries
                    .iter()
                    .map(|_| ListResult::Temporary(e.clone()))
                    .collect());
            }
        };
        let granted = self.grant(queries.len());
        let work = futures_util::future::join_all(
            queries[..granted]
                .iter()
                .map(|q| resolver.check_list(&q.zone, &q.subject)),
        );
        let (answers, why) = self.timed(queries.len(), work).await;
        Ok(answers
            .into_iter()
            .map(|a| {
                a.map_or_else(
                    || match refused(why) {
                        LookupResult::Temporary(e) => ListResult::Temporary(e),
                        _ => ListResult::Invalid(too_many()),
                    },
                    listing,
                )
            })
            .collect())
    }
}
