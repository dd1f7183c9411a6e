//! Active health checks (`upstream.health_check`): every `health_interval`,
//! each server gets `GET <health_check>` on a connection of its own. A 2xx
//! or 3xx answer within the interval puts it in; anything else (refused,
//! timed out, another status) takes it out until a probe answers again.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::pool::connect_io;
use super::upstreams::Upstreams;

impl Upstreams {
    /// Starts probing when `upstream.health_check` is set; ends at shutdown.
    pub(crate) fn spawn_prober(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        let path = self.health_check.clone()?;
        let ups = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(ups.health_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = crate::shutdown::stopped(&mut shutdown) => return,
                    _ = tick.tick() => {}
                }
                let mut probes = tokio::task::JoinSet::new();
                for i in 0..ups.servers.len() {
                    let (ups, path) = (ups.clone(), path.clone());
                    probes.spawn(async move {
                        // Bounded by the interval, so probes never pile up.
                        let outcome =
                            tokio::time::timeout(ups.health_interval, probe(&ups, i, path))
                                .await
                                .unwrap_or_else(|_| {
                                    Err("no answer within upstream.health_interval".into())
                                });
                        match outcome {
                            Ok(()) => ups.mark_up(i),
                            Err(why) => ups.mark_down(i, &why),
                        }
                    });
                }
                while probes.join_next().await.is_some() {}
            }
        }))
    }
}

/// One probe of server `i`: `Ok` on a 2xx or 3xx answer.
async fn probe(ups: &Upstreams, i: usize, path: PathAndQuery) -> Result<(), String> {
    let server = ups.servers.get(i).ok_or("no such server")?;
    let (tls, headers) = {
        let s = ups.settings();
        (s.tls.clone(), s.headers.clone())
    };
    let io = connect_io(server, tls).await.map_err(|e| e.to_string())?;
    let (mut sender, driver) = http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    let mut req = Request::get(http::Uri::from(path))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    // The configured extra headers too: a health path may need the same
    // credential as the API.
    for (name, value) in headers {
        h.insert(name, value);
    }
    h.insert(HOST, server.host_header.clone());
    h.insert(
        USER_AGENT,
        HeaderValue::from_static("tokengate-health-check"),
    );
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("health check answered {status}"))
    }
}
