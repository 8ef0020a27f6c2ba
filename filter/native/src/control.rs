//! The control thread: where the filter's sync singleton runs (as it runs in Envoy's main
//! thread under wasm), with its own root context, its tick, the usage queue's wake-ups, and its
//! gRPC stream to the control plane dialled by tonic instead of Envoy's gRPC client.
//!
//! Every call into the filter is made from the thread's one loop, never from inside another
//! call into it: the stream's tasks only pass what they receive to that loop.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::{AbortHandle, LocalSet};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Endpoint;

use crate::thread::{self, Config};
use crate::{sdk, shared};

/// A cluster's endpoints (`http://host:port`): one, or several replicas.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum Endpoints {
    One(String),
    Several(Vec<String>),
}

impl Endpoints {
    fn list(&self) -> &[String] {
        match self {
            Endpoints::One(one) => std::slice::from_ref(one),
            Endpoints::Several(several) => several,
        }
    }
}

/// A unary call a worker asks the control thread to make.
pub struct Call {
    pub cluster: String,
    /// `/<service>/<method>`.
    pub path: String,
    pub metadata: Vec<(Vec<u8>, Vec<u8>)>,
    pub message: Vec<u8>,
    pub timeout: Duration,
    /// The asking stream's scheduler, which the answer is committed to.
    pub scheduler: Arc<crate::envoy::Scheduler>,
}

/// A call's answer: the response message, or the gRPC status and message it failed with.
pub type Answer = Result<Vec<u8>, (u32, String)>;

/// What workers ask of the control thread.
enum Ask {
    /// A unary call, with its token.
    Call(u32, Call),
    /// Commit `event` to `scheduler` after `delay` (a worker's tick).
    After(Duration, Arc<crate::envoy::Scheduler>, u64),
}

/// Where workers' asks go: the control thread's loop (set when it starts).
static CALLS: OnceLock<UnboundedSender<Ask>> = OnceLock::new();

/// Commits `event` to `scheduler` after `delay`; `false` without a control thread.
pub fn after(delay: Duration, scheduler: Arc<crate::envoy::Scheduler>, event: u64) -> bool {
    CALLS
        .get()
        .is_some_and(|calls| calls.send(Ask::After(delay, scheduler, event)).is_ok())
}
/// Answers waiting for their stream's worker, by token, with when they came.
static ANSWERS: Mutex<Vec<(u32, Instant, Answer)>> = Mutex::new(Vec::new());
/// An answer whose stream went away before taking it is dropped after this long.
const ANSWER_KEPT: Duration = Duration::from_secs(60);
/// Call tokens (one space for every worker: a worker's dispatcher keys its calls by token).
static CALL_TOKENS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1 << 31);

/// Hands a call to the control thread; its token, or `None` without a control thread.
pub fn call(call: Call) -> Option<u32> {
    let calls = CALLS.get()?;
    let token = CALL_TOKENS
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .max(1 << 31);
    calls.send(Ask::Call(token, call)).ok()?;
    Some(token)
}

/// The answer of call `token`, once (on the asking stream's worker).
pub fn take_answer(token: u32) -> Option<Answer> {
    let mut answers = ANSWERS.lock().unwrap_or_else(PoisonError::into_inner);
    let at = answers.iter().position(|(t, _, _)| *t == token)?;
    Some(answers.swap_remove(at).2)
}

/// A cluster's replicas for unary calls, each its own lazily connected channel, taken in turn
/// (Envoy's round robin); one that refused a call is left out for [`LEFT_OUT_FOR`], as Envoy's
/// health check ejects it, so the next ask goes to a replica that answers.
struct Replicas {
    replicas: Vec<Replica>,
    next: Cell<usize>,
}

struct Replica {
    channel: tonic::transport::Channel,
    out_until: Cell<Option<Instant>>,
}

/// How long a replica that refused a call is asked only when every other one refuses too.
const LEFT_OUT_FOR: Duration = Duration::from_secs(5);

impl Replicas {
    fn new(endpoints: &Endpoints) -> Replicas {
        let replicas = endpoints
            .list()
            .iter()
            .filter_map(|address| Endpoint::from_shared(address.clone()).ok())
            .map(|endpoint| Replica {
                channel: endpoint
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy(),
                out_until: Cell::new(None),
            })
            .collect();
        Replicas {
            replicas,
            next: Cell::new(0),
        }
    }

    /// The order in which a call asks the replicas (see [`order`]).
    fn order(&self, now: Instant) -> Vec<usize> {
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let out: Vec<bool> = self
            .replicas
            .iter()
            .map(|r| r.out_until.get().is_some_and(|until| now < until))
            .collect();
        order(start, &out)
    }
}

/// Each replica once, in turn from `start`, those left out (`out[i]`) last.
fn order(start: usize, out: &[bool]) -> Vec<usize> {
    let count = out.len();
    let first = start.checked_rem(count).unwrap_or(0);
    let turn = (0..count).map(|k| (first + k) % count);
    let mut order: Vec<usize> = turn.clone().filter(|&i| !out[i]).collect();
    order.extend(turn.filter(|&i| out[i]));
    order
}

/// Makes a call and commits its answer to the asking stream's scheduler.
async fn answer(token: u32, call: Call, replicas: Option<Rc<Replicas>>) {
    let result = match replicas {
        Some(replicas) => {
            // A replica that just went away refuses the call (UNAVAILABLE): the next one is
            // asked, within the call's deadline, as Envoy's cluster would route it elsewhere.
            let asks = async {
                let mut last = Err((14, "no replica".to_string()));
                for at in replicas.order(Instant::now()) {
                    let Some(replica) = replicas.replicas.get(at) else {
                        continue;
                    };
                    last = unary(replica.channel.clone(), &call).await;
                    match last {
                        Err((14, _)) => replica.out_until.set(Some(Instant::now() + LEFT_OUT_FOR)),
                        _ => {
                            replica.out_until.set(None);
                            break;
                        }
                    }
                }
                last
            };
            match tokio::time::timeout(call.timeout, asks).await {
                Ok(result) => result,
                Err(_) => Err((4, "deadline exceeded".to_string())),
            }
        }
        None => Err((14, format!("unknown cluster '{}'", call.cluster))),
    };
    {
        let mut answers = ANSWERS.lock().unwrap_or_else(PoisonError::into_inner);
        answers.retain(|(_, at, _)| at.elapsed() < ANSWER_KEPT);
        answers.push((token, Instant::now(), result));
    }
    call.scheduler.commit(u64::from(token));
}

async fn unary(channel: tonic::transport::Channel, call: &Call) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| (14, e.to_string()))?;
    let path = call
        .path
        .parse::<tonic::codegen::http::uri::PathAndQuery>()
        .map_err(|e| (13, e.to_string()))?;
    let mut request = tonic::Request::new(call.message.clone());
    insert_metadata(&mut request, &call.metadata);
    let response = grpc.unary(request, path, Raw).await.map_err(failure)?;
    Ok(response.into_inner())
}

/// A failed call's status as Envoy's gRPC client reports it: a status the server sent as it
/// is; a connection lost during the call (no status from the server, which tonic calls
/// UNKNOWN) INTERNAL, as Envoy reports a reset stream.
fn failure(status: tonic::Status) -> (u32, String) {
    use std::error::Error;
    let code = match status.code() {
        tonic::Code::Unknown if status.source().is_some() => 13,
        code => code as u32,
    };
    (code, status.message().to_string())
}

fn insert_metadata<T>(request: &mut tonic::Request<T>, metadata: &[(Vec<u8>, Vec<u8>)]) {
    for (name, value) in metadata {
        let name = tonic::metadata::AsciiMetadataKey::from_bytes(name);
        let value = tonic::metadata::AsciiMetadataValue::try_from(value.as_slice());
        if let (Ok(name), Ok(value)) = (name, value) {
            request.metadata_mut().insert(name, value);
        }
    }
}

/// What the stream tasks pass to the loop.
enum Event {
    Message(u32, Vec<u8>),
    Closed(u32, u32, String),
}

struct Outbound {
    messages: UnboundedSender<Vec<u8>>,
    task: AbortHandle,
}

/// The control thread's link to its streams (in its thread state).
pub struct SyncLink {
    events: UnboundedSender<Event>,
    queue_waker: shared::Waker,
    clusters: Arc<HashMap<String, Endpoints>>,
    streams: HashMap<u32, Outbound>,
    next_token: u32,
}

/// The control thread's tick loop runs: what idle workers park is sent from it.
static TICKING: AtomicBool = AtomicBool::new(false);

/// Whether the control thread's tick loop runs ([`TICKING`]).
pub fn ticking() -> bool {
    TICKING.load(Ordering::Acquire)
}

/// Starts this process's control thread, once (later configurations with a `sync` part, e.g.
/// after a listener update, find it running).
pub fn start(plugin: Vec<u8>, clusters: HashMap<String, Endpoints>) {
    static STARTED: OnceLock<Mutex<bool>> = OnceLock::new();
    let started = STARTED.get_or_init(Mutex::default);
    let mut started = started.lock().unwrap_or_else(PoisonError::into_inner);
    if *started {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("tokenrouter-sync".into())
        .spawn(move || run(plugin, clusters));
    match spawned {
        Ok(_) => *started = true,
        Err(e) => log::error!("cannot start the control thread: {e}"),
    }
}

fn run(plugin: Vec<u8>, clusters: HashMap<String, Endpoints>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start the control thread's runtime: {e}");
            return;
        }
    };
    LocalSet::new().block_on(&runtime, serve(plugin, clusters));
}

async fn serve(plugin: Vec<u8>, clusters: HashMap<String, Endpoints>) {
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let (queue_waker, mut wake_rx): (shared::Waker, UnboundedReceiver<u32>) =
        mpsc::unbounded_channel();
    let (calls, mut call_rx) = mpsc::unbounded_channel();
    if CALLS.set(calls).is_err() {
        log::error!("a second control thread started");
        return;
    }
    // Each cluster's replicas, shared by every unary call to it.
    let replicas: HashMap<String, Rc<Replicas>> = clusters
        .iter()
        .map(|(name, endpoints)| (name.clone(), Rc::new(Replicas::new(endpoints))))
        .collect();
    thread::with(|h| {
        h.sync = Some(SyncLink {
            events,
            queue_waker,
            clusters: Arc::new(clusters),
            streams: HashMap::new(),
            next_token: 0,
        })
    });
    let config = Config {
        key: 0,
        plugin: Arc::from(plugin),
    };
    let root = thread::root(&config);
    let period = Duration::from_millis(thread::with(|h| h.tick_ms(root)).max(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    TICKING.store(true, Ordering::Release);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // What idle workers parked, in batches of their own (`vm::park_usage_backlog`).
                tokenrouter_filter::vm::send_parked(|item| {
                    shared::resolve_queue(tokenrouter_filter::VM_ID, tokenrouter_filter::USAGE_QUEUE)
                        .is_some_and(|queue| shared::enqueue(queue, item))
                });
                // Queues wake this thread only every few items: what came since, now.
                for queue in shared::queue_ids() {
                    sdk::queue_ready(root, queue);
                }
                sdk::tick(root);
                crate::stats::request_flush();
            }
            Some(queue) = wake_rx.recv() => sdk::queue_ready(root, queue),
            Some(ask) = call_rx.recv() => match ask {
                Ask::Call(token, call) => {
                    let replicas = replicas.get(&call.cluster).cloned();
                    tokio::task::spawn_local(answer(token, call, replicas));
                }
                Ask::After(delay, scheduler, event) => {
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(delay).await;
                        scheduler.commit(event);
                    });
                }
            },
            Some(event) = event_rx.recv() => match event {
                Event::Message(token, message) => {
                    let size = message.len();
                    thread::with(|h| h.grpc_message = message);
                    sdk::grpc_receive(root, token, size);
                }
                Event::Closed(token, code, message) => {
                    let known = thread::with(|h| {
                        h.grpc_status = (code, message);
                        h.sync.as_mut().and_then(|s| s.streams.remove(&token)).is_some()
                    });
                    // A stream the filter cancelled is not reported closed.
                    if known {
                        sdk::grpc_close(root, token, code);
                    }
                }
            },
        }
    }
}

/// The waker of the queues registered on this thread: the control thread's loop; elsewhere
/// none (a sender whose loop is gone).
pub fn queue_waker() -> shared::Waker {
    thread::with(|h| h.sync.as_ref().map(|s| s.queue_waker.clone()))
        .unwrap_or_else(|| mpsc::unbounded_channel().0)
}

/// Opens a stream to `cluster` (from the control thread only); its token.
pub fn open_stream(
    cluster: &str,
    service: &str,
    method: &str,
    metadata: Vec<(Vec<u8>, Vec<u8>)>,
) -> Option<u32> {
    let (address, events, token) = thread::with(|h| {
        let link = h.sync.as_mut()?;
        // Each new stream (a reconnect) dials the cluster's next endpoint, so a replica that
        // died is left for the next one.
        let endpoints = link.clusters.get(cluster)?.list();
        let at = usize::try_from(link.next_token).unwrap_or(0) % endpoints.len().max(1);
        let address = endpoints.get(at)?.clone();
        link.next_token = link.next_token.wrapping_add(1).max(1);
        Some((address, link.events.clone(), link.next_token))
    })?;
    let path = format!("/{service}/{method}");
    let (messages, outbound) = mpsc::unbounded_channel();
    let task = tokio::task::spawn_local(async move {
        let (code, message) =
            match stream(&address, &path, metadata, outbound, &events, token).await {
                Ok(()) => (0, String::new()),
                Err(status) => (status.code() as u32, status.message().to_string()),
            };
        let _ = events.send(Event::Closed(token, code, message));
    })
    .abort_handle();
    thread::with(|h| {
        if let Some(link) = h.sync.as_mut() {
            link.streams.insert(token, Outbound { messages, task });
        }
    });
    Some(token)
}

async fn stream(
    address: &str,
    path: &str,
    metadata: Vec<(Vec<u8>, Vec<u8>)>,
    outbound: UnboundedReceiver<Vec<u8>>,
    events: &UnboundedSender<Event>,
    token: u32,
) -> Result<(), tonic::Status> {
    let unavailable = |e: &dyn std::fmt::Display| tonic::Status::unavailable(e.to_string());
    let channel = Endpoint::from_shared(address.to_string())
        .map_err(|e| unavailable(&e))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| unavailable(&e))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| unavailable(&e))?;
    let path = path
        .parse::<tonic::codegen::http::uri::PathAndQuery>()
        .map_err(|e| unavailable(&e))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(
        outbound,
    ));
    insert_metadata(&mut request, &metadata);
    let mut inbound = grpc.streaming(request, path, Raw).await?.into_inner();
    while let Some(message) = inbound.message().await? {
        if events.send(Event::Message(token, message)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Sends a message on a stream; `false` when the stream is unknown or gone.
pub fn send(token: u32, message: &[u8], end_stream: bool) -> bool {
    thread::with(|h| {
        let Some(link) = h.sync.as_mut() else {
            return false;
        };
        let Some(out) = link.streams.get(&token) else {
            return false;
        };
        let sent = out.messages.send(message.to_vec()).is_ok();
        if end_stream {
            // Dropping the sender ends the request stream.
            if let Some(out) = link.streams.get_mut(&token) {
                out.messages = mpsc::unbounded_channel().0;
            }
        }
        sent
    })
}

/// Cancels a stream: its task stops, and no close is reported.
pub fn cancel(token: u32) -> bool {
    thread::with(|h| {
        h.sync
            .as_mut()
            .and_then(|link| link.streams.remove(&token))
            .map(|out| out.task.abort())
            .is_some()
    })
}

/// Messages as the filter encodes and decodes them: bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_asked_in_turn_with_those_left_out_last() {
        let cases: &[(usize, &[bool], &[usize])] = &[
            (0, &[], &[]),
            (0, &[false], &[0]),
            (7, &[true], &[0]),
            (0, &[false, false], &[0, 1]),
            (1, &[false, false], &[1, 0]),
            (0, &[true, false], &[1, 0]),
            (1, &[true, false], &[1, 0]),
            (2, &[false, true, false], &[2, 0, 1]),
            (usize::MAX, &[false, false, false], &[0, 1, 2]),
        ];
        for (start, out, expected) in cases {
            assert_eq!(order(*start, out), *expected, "start {start}, out {out:?}");
        }
    }

    #[test]
    fn a_connection_lost_during_a_call_is_internal_and_a_sent_status_stays() {
        let lost = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert_eq!(lost.code(), tonic::Code::Unknown);
        assert_eq!(failure(lost).0, 13);
        assert_eq!(failure(tonic::Status::unknown("sent")).0, 2);
        assert_eq!(failure(tonic::Status::unavailable("gone")).0, 14);
        assert_eq!(failure(tonic::Status::resource_exhausted("full")).0, 8);
    }
}
