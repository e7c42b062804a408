//! The admin socket: a unix socket in the spool directory, one command per
//! line, one answer line per command. `postern reload` and
//! `postern queue flush` talk to it.
//!
//! Commands: `reload`, `flush`, `status`, `release ID` (a held message
//! back into the queue), `delete ID`, `hold ID`, `requeue ID` (the last
//! two wait for an attempt in flight to end). Answers start with `ok` or `error:`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Shared;

/// Where the admin socket of a spool lives.
pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("admin.sock")
}

/// Binds the socket (replacing a stale one) and serves it until shutdown.
pub fn start(path: &Path, shared: Arc<Shared>) -> anyhow::Result<()> {
    // Only root (or the daemon's user) may reload or flush: the socket is
    // made under another name, closed to others, and only then given its
    // name, so there is no moment when others could connect.
    let tmp = path.with_extension("sock.new");
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot create admin socket {}: {e}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot create admin socket {}: {e}", path.display()))?;
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.clone();
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = shutdown.changed() => return,
            };
            match conn {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, shared.clone()));
                }
                Err(e) => {
                    tracing::error!("admin socket: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn serve(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    // Commands are short: a line longer than this ends the connection.
    let mut lines = BufReader::new(tokio::io::AsyncReadExt::take(read, 64 << 10)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match line.trim() {
            "reload" => {
                tracing::info!("reload requested on the admin socket");
                match shared.reload().await {
                    Ok(id) => format!("ok generation {id}"),
                    Err(e) => {
                        tracing::error!("reload failed, the old generation keeps serving: {e:#}");
                        format!("error: {e:#}").replace('\n', " ")
                    }
                }
            }
            "flush" => {
                shared.queue.flush();
                tracing::info!("queue flush requested on the admin socket");
                "ok flushing the queue".to_string()
            }
            "status" => {
                let generation = shared.generation.load();
                format!(
                    "ok generation {} sessions {} plugins {} chain-entries {}",
                    generation.id,
                    shared.limits.total(),
                    generation.chains.plugins.len(),
                    generation.chains.len()
                )
            }
            cmd if cmd.starts_with("hold ") || cmd.starts_with("requeue ") => {
                let (verb, id) = cmd.split_once(' ').unwrap_or((cmd, ""));
                let what = if verb == "hold" {
                    crate::deliver::Admin::Hold
                } else {
                    crate::deliver::Admin::Requeue
                };
                shared.queue.admin(what, id.trim().to_string()).await
            }
            cmd if cmd.starts_with("release ") || cmd.starts_with("delete ") => {
                let (verb, id) = cmd.split_once(' ').unwrap_or((cmd, ""));
                let id = id.trim().to_string();
                let spool = shared.spool.clone();
                let release = verb == "release";
                let what = id.clone();
                let done = tokio::task::spawn_blocking(move || {
                    if release {
                        spool.release(&what)
                    } else {
                        spool.delete(&what)
                    }
                })
                .await;
                match done {
                    Ok(Ok(true)) => {
                        tracing::info!("{id}: {verb}d on the admin socket");
                        if release {
                            shared.queue.queued(id.clone());
                        }
                        format!("ok {verb}d {id}")
                    }
                    Ok(Ok(false)) if release => format!("error: no held message {id:?}"),
                    Ok(Ok(false)) => format!("error: no message {id:?}"),
                    Ok(Err(e)) => format!("error: {e}"),
                    Err(e) => format!("error: {e}"),
                }
            }
            other => format!(
                "error: unknown command {other:?} (reload, flush, status, release ID, delete ID, hold ID, requeue ID)"
            ),
        };
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Sends one command to a running daemon and returns its answer line.
pub async fn send(path: &Path, command: &str) -> anyhow::Result<String> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the daemon at {}: {e} (is postern running?)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{command}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the daemon closed the admin connection"))?;
    Ok(answer)
}
