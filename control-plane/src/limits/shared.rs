//! Counters in Redis, shared by every control-plane replica pointed at the same server
//! (`TOKENROUTER_REDIS_URL`; keys under `TOKENROUTER_REDIS_PREFIX`, default `tokenrouter`).
//!
//! What must be atomic across replicas — the key's request rate and the balance reservations —
//! is decided by one Lua script per admission ([`ADMIT`]): it checks the rate, checks that each
//! balance minus the reservations in flight covers this request, and only if everything passes
//! takes one request from the rate and holds the reservation. Redis runs scripts one at a time,
//! which is what the local lock does for one process.
//!
//! Balances live in the database, not here. A replica reads them before the script; a
//! settlement elsewhere in between (charge committed, then reservation released) would make
//! the balance read stale while the release is already visible, so every release bumps the
//! owner's sequence number and the script refuses to decide on a balance read under an older
//! one (the admission is retried).
//!
//! Hourly token windows are plain counters by the minute (`win:<key>`, fields `i<minute>` and
//! `o<minute>`), filled from the request log the first time a key is checked (marker
//! `winl:<key>`) and by every settlement after that. Checking a budget only reads them: as in
//! one process, tokens enter the window when a request's usage arrives.
//!
//! Layout under the prefix `P`: `P:bkt:<key>` (hash: milli-requests, at, rps),
//! `P:req:<request>` (the reservation's owner keys, expiring when the reservation lapses),
//! `P:res:<owner>` (hash: request → `picos:expires_ms`), `P:seq:<owner>`, `P:win:<key>`,
//! `P:winl:<key>`. Amounts are compared in Lua numbers (doubles): exact below 2^53 pico-dollars
//! (about $9,000), within a micro-dollar above. Scripts reach keys derived from their
//! arguments, so a Redis Cluster is not supported (one server, or a primary with replicas).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokenrouter_engine::admission::Ask;
use tokenrouter_proto::sync::v1::UsageRecord;

use super::window::{HourWindow, WINDOW_MINUTES};
use super::{
    balance, budget_refusal, counts_tokens, load_window, owners, quota_message, rate_refusal,
    LimitError, Policy, Refusal, RESERVATION_LAPSES_MS,
};
use crate::store::metering::Owner;
use crate::store::Store;

/// Environment variable naming the Redis server (`redis://host:port/db`).
pub const REDIS_URL_ENV: &str = "TOKENROUTER_REDIS_URL";
/// Environment variable prefixing every key (several deployments on one server).
pub const REDIS_PREFIX_ENV: &str = "TOKENROUTER_REDIS_PREFIX";

/// How long Redis may take to answer before the admission is given up (the edge then treats
/// the control plane as away: metered keys 503, others served with a warning).
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Windows and their marker outlive the hour they cover by a little; an idle key's expire.
const WINDOW_TTL_MS: i64 = (WINDOW_MINUTES + 10) * 60_000;

/// Admissions retried because a settlement moved a balance under them, at most.
const MAX_TRIES: usize = 5;

/// KEYS: bucket, reservation of the request, then per owner its reservations and sequence.
/// ARGV: now_ms, rps, needed picos, expiry of the reservation, request id, owner count, then
/// per owner its balance and the sequence the balance was read under.
/// Returns {0} admitted, {1, wait_ms} rate, {2, owner index, available} balance, {3} retry.
const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local rps = tonumber(ARGV[2])
local needed = tonumber(ARGV[3])
local rid = ARGV[5]
local n = tonumber(ARGV[6])
if rid ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
local milli = 0
if rps > 0 then
  local b = redis.call('HMGET', KEYS[1], 'm', 't', 'r')
  local cap = rps * 1000
  if not b[1] or tonumber(b[3]) ~= rps then
    milli = cap
  else
    local elapsed = now - tonumber(b[2])
    if elapsed < 0 then elapsed = 0 end
    milli = math.min(cap, tonumber(b[1]) + elapsed * rps)
  end
  if milli < 1000 then return {1, math.ceil((1000 - milli) / rps)} end
end
for i = 1, n do
  local res = KEYS[1 + 2 * i]
  local seq = KEYS[2 + 2 * i]
  if (redis.call('GET', seq) or '0') ~= ARGV[6 + 2 * i] then return {3} end
  local reserved = 0
  local all = redis.call('HGETALL', res)
  for j = 1, #all, 2 do
    local v = all[j + 1]
    local sep = string.find(v, ':', 1, true)
    if tonumber(string.sub(v, sep + 1)) <= now then
      redis.call('HDEL', res, all[j])
    else
      reserved = reserved + tonumber(string.sub(v, 1, sep - 1))
    end
  end
  local available = tonumber(ARGV[5 + 2 * i]) - reserved
  if available <= 0 or available < needed then return {2, i, available} end
end
if rps > 0 then
  redis.call('HSET', KEYS[1], 'm', milli - 1000, 't', now, 'r', rps)
  redis.call('PEXPIRE', KEYS[1], 60000)
end
if n > 0 and rid ~= '' then
  local owners = {}
  for i = 1, n do
    redis.call('HSET', KEYS[1 + 2 * i], rid, ARGV[3] .. ':' .. ARGV[4])
    redis.call('PEXPIREAT', KEYS[1 + 2 * i], tonumber(ARGV[4]) + 60000)
    owners[#owners + 1] = KEYS[1 + 2 * i] .. '|' .. KEYS[2 + 2 * i]
  end
  redis.call('SET', KEYS[2], table.concat(owners, '|'), 'PXAT', ARGV[4])
end
return {0}
";

/// ARGV: prefix, window ttl, then per record: request id, key id, minute ('' = outside the
/// window or no tokens), input, output. Releases each record's reservation (bumping its owners'
/// sequences) and adds its tokens to its key's window where the window is loaded.
const SETTLE: &str = r"
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 3, #ARGV, 5 do
  local rid = ARGV[i]
  local req = p .. ':req:' .. rid
  local owners = redis.call('GET', req)
  if owners then
    for res, seq in string.gmatch(owners, '([^|]+)|([^|]+)') do
      redis.call('HDEL', res, rid)
      redis.call('INCR', seq)
      -- Outlives any reservation read under it (RESERVATION_LAPSES_MS + a minute).
      redis.call('PEXPIRE', seq, 1860000)
    end
    redis.call('DEL', req)
  end
  local minute = ARGV[i + 2]
  if minute ~= '' then
    local marker = p .. ':winl:' .. ARGV[i + 1]
    if redis.call('EXISTS', marker) == 1 then
      local win = p .. ':win:' .. ARGV[i + 1]
      redis.call('HINCRBY', win, 'i' .. minute, ARGV[i + 3])
      redis.call('HINCRBY', win, 'o' .. minute, ARGV[i + 4])
      redis.call('PEXPIRE', win, ttl)
      redis.call('PEXPIRE', marker, ttl)
    end
  end
end
return 0
";

/// KEYS: window, marker. ARGV: ttl, then minute, input, output triples. Fills a window that
/// has no marker (another replica may have filled it first: then nothing changes).
const INIT_WINDOW: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[1], 'i' .. ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[1], 'o' .. ARGV[i], ARGV[i + 2])
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// Counters in one Redis server.
pub struct SharedCounters {
    conn: ConnectionManager,
    prefix: String,
    admit: Script,
    settle: Script,
    init_window: Script,
}

impl std::fmt::Debug for SharedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounters")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn counters_error(e: redis::RedisError) -> LimitError {
    LimitError::Counters(e.to_string())
}

/// The counters `TOKENROUTER_REDIS_URL` names, connected; `None` when it is unset.
pub async fn from_env() -> Result<Option<SharedCounters>, LimitError> {
    let url = match std::env::var(REDIS_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => return Ok(None),
    };
    let prefix = std::env::var(REDIS_PREFIX_ENV)
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "tokenrouter".to_string());
    SharedCounters::connect(url.trim(), &prefix).await.map(Some)
}

impl SharedCounters {
    /// Connects (failing when the server does not answer now; later outages are retried by
    /// the connection manager).
    pub async fn connect(url: &str, prefix: &str) -> Result<SharedCounters, LimitError> {
        let client = redis::Client::open(url)
            .map_err(|e| LimitError::Counters(format!("{REDIS_URL_ENV}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| LimitError::Counters(format!("cannot reach Redis: {e}")))?;
        Ok(SharedCounters {
            conn,
            prefix: prefix.to_string(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            init_window: Script::new(INIT_WINDOW),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn owner_key(&self, kind: &str, owner: &Owner) -> String {
        format!("{}:{kind}:{}:{}", self.prefix, owner.kind(), owner.id())
    }

    pub async fn admit(
        &self,
        store: &dyn Store,
        ask: &Ask,
        policy: &Policy,
        now_ms: i64,
    ) -> Result<Result<(), Refusal>, LimitError> {
        let limits = policy.limits;
        if limits.any_budget() {
            let mut window = self.window(store, &ask.key_id, now_ms).await?;
            if let Some(refusal) = budget_refusal(ask, &limits, &mut window, now_ms) {
                return Ok(Err(refusal));
            }
        }
        let owners = owners(ask, policy);
        let needed = ask.reserve_picos.max(0);
        let expires_ms = now_ms + RESERVATION_LAPSES_MS;
        let mut conn = self.conn.clone();
        for _ in 0..MAX_TRIES {
            let seqs: Vec<Option<String>> = if owners.is_empty() {
                Vec::new()
            } else {
                let keys: Vec<String> = owners.iter().map(|o| self.owner_key("seq", o)).collect();
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(counters_error)?
            };
            let mut invocation = self.admit.prepare_invoke();
            invocation
                .key(self.key("bkt", &ask.key_id))
                .key(self.key("req", &ask.request_id))
                .arg(now_ms)
                .arg(limits.rps)
                .arg(needed)
                .arg(expires_ms)
                .arg(&ask.request_id)
                .arg(owners.len());
            for (owner, seq) in owners.iter().zip(&seqs) {
                let balance = balance(store, owner).await?;
                invocation
                    .key(self.owner_key("res", owner))
                    .key(self.owner_key("seq", owner))
                    .arg(balance)
                    .arg(seq.as_deref().unwrap_or("0"));
            }
            let answer: Vec<i64> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(counters_error)?;
            let verdict = match answer.as_slice() {
                [0] => Ok(()),
                [1, wait_ms] => {
                    // As the local bucket says it: whole seconds, at least one.
                    let wait_s = u32::try_from((wait_ms.max(&1) + 999) / 1000).unwrap_or(u32::MAX);
                    Err(rate_refusal(&ask.key_id, limits.rps, wait_s))
                }
                [2, index, available] => {
                    let owner = usize::try_from(*index)
                        .ok()
                        .and_then(|i| owners.get(i.checked_sub(1)?))
                        .ok_or_else(|| LimitError::Counters("admission: bad owner".into()))?;
                    Err(Refusal::Quota {
                        message: quota_message(owner, *available, needed),
                    })
                }
                // A settlement moved a balance since it was read: read it again.
                [3] => continue,
                other => {
                    return Err(LimitError::Counters(format!(
                        "admission script answered {other:?}"
                    )))
                }
            };
            return Ok(verdict);
        }
        Err(LimitError::Counters(
            "balances kept moving under the admission; try again".into(),
        ))
    }

    /// The key's window: from Redis, filled from the request log first when no replica has.
    async fn window(
        &self,
        store: &dyn Store,
        key_id: &str,
        now_ms: i64,
    ) -> Result<HourWindow, LimitError> {
        let win = self.key("win", key_id);
        let marker = self.key("winl", key_id);
        let mut conn = self.conn.clone();
        let (loaded, fields): (bool, Vec<(String, u64)>) = redis::pipe()
            .exists(&marker)
            .hgetall(&win)
            .query_async(&mut conn)
            .await
            .map_err(counters_error)?;
        if !loaded {
            let window = load_window(store, key_id, now_ms).await?;
            let mut invocation = self.init_window.prepare_invoke();
            invocation.key(&win).key(&marker).arg(WINDOW_TTL_MS);
            for (minute, input, output) in window.minutes() {
                invocation.arg(minute).arg(input).arg(output);
            }
            let _: i64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(counters_error)?;
            return Ok(window);
        }
        let mut window = HourWindow::default();
        let mut stale = Vec::new();
        let oldest = now_ms.div_euclid(60_000) - WINDOW_MINUTES;
        for (field, n) in fields {
            let (input, minute) = match field.split_at_checked(1) {
                Some(("i", m)) => (true, m),
                Some(("o", m)) => (false, m),
                _ => continue,
            };
            let Ok(minute) = minute.parse::<i64>() else {
                continue;
            };
            if minute <= oldest {
                stale.push(field);
                continue;
            }
            let (i, o) = if input { (n, 0) } else { (0, n) };
            window.add(minute * 60_000, i, o, now_ms);
        }
        if !stale.is_empty() {
            let _: Result<i64, _> = conn.hdel(&win, stale).await;
        }
        Ok(window)
    }

    /// Releases the records' reservations and adds their tokens to loaded windows, in one call.
    pub async fn settle(&self, records: &[&UsageRecord], now_ms: i64) -> Result<(), LimitError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut invocation = self.settle.prepare_invoke();
        invocation.arg(&self.prefix).arg(WINDOW_TTL_MS);
        let oldest = now_ms.div_euclid(60_000) - WINDOW_MINUTES;
        for r in records {
            let minute = r.started_at_unix_ms.min(now_ms).div_euclid(60_000);
            let minute = if counts_tokens(r) && minute > oldest {
                minute.to_string()
            } else {
                String::new()
            };
            invocation
                .arg(&r.request_id)
                .arg(&r.key_id)
                .arg(minute)
                .arg(r.input_tokens)
                .arg(r.output_tokens);
        }
        let mut conn = self.conn.clone();
        let _: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(counters_error)?;
        Ok(())
    }

    /// Credit held by requests in flight for `owner`, on every replica.
    pub async fn reserved(&self, owner: &Owner, now_ms: i64) -> Result<i64, LimitError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = conn
            .hgetall(self.owner_key("res", owner))
            .await
            .map_err(counters_error)?;
        Ok(all
            .iter()
            .filter_map(|(_, v)| {
                let (picos, expires) = v.split_once(':')?;
                let expires: i64 = expires.parse().ok()?;
                (expires > now_ms).then(|| picos.parse::<i64>().ok())?
            })
            .fold(0i64, i64::saturating_add))
    }
}
