//! Leader election against a mocked API server that keeps one Lease the way the API
//! server does: every update must carry the `resourceVersion` it was read at, or it is
//! refused with 409 Conflict; creating an existing Lease is 409 AlreadyExists. Each
//! replica has its own client; the fake can hold writes to force two replicas to race.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use parking_lot::Mutex;
use portcullis_controller::leader::{ElectionConfig, Leadership, acquire};
use serde_json::{Value, json};
use tokio::time::Instant;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/system/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/system/leases/portcullis-controller";

#[derive(Default)]
struct Fake {
    lease: Mutex<Option<Value>>,
    rv: Mutex<u64>,
    /// (replica, method) of every request.
    log: Mutex<Vec<(usize, String)>>,
    /// Replicas whose writes are answered 500.
    failing: Mutex<Vec<usize>>,
    /// The race: each replica's first write waits until both have one waiting; then the
    /// second replica's waits until the first has read the Lease again after writing.
    race: Mutex<Option<Race>>,
}

#[derive(Default)]
struct Race {
    pending: [bool; 2],
    first_wrote: bool,
    first_read_after: bool,
    done: [bool; 2],
}

fn response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": reason})
}

impl Fake {
    fn holder(&self) -> Option<String> {
        self.lease.lock().as_ref().and_then(|l| {
            l["spec"]["holderIdentity"]
                .as_str()
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
        })
    }

    fn store(&self, mut lease: Value) -> Value {
        let mut rv = self.rv.lock();
        *rv += 1;
        lease["metadata"]["resourceVersion"] = json!(rv.to_string());
        *self.lease.lock() = Some(lease.clone());
        lease
    }

    async fn wait_for(&self, ready: impl Fn(&Race) -> bool) {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if self.race.lock().as_ref().is_none_or(&ready) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Holds a replica's first write as the race asks.
    async fn gate(&self, replica: usize) {
        let first_write = {
            let mut race = self.race.lock();
            match race.as_mut() {
                Some(r) if !r.done[replica] => {
                    r.pending[replica] = true;
                    true
                }
                _ => false,
            }
        };
        if !first_write {
            return;
        }
        self.wait_for(|r| r.pending[0] && r.pending[1]).await;
        if replica == 1 {
            self.wait_for(|r| r.first_read_after).await;
        }
        if let Some(r) = self.race.lock().as_mut() {
            r.done[replica] = true;
            if replica == 0 {
                r.first_wrote = true;
            }
        }
    }

    async fn handle(
        &self,
        replica: usize,
        method: &str,
        path: &str,
        body: Value,
    ) -> Response<Body> {
        self.log.lock().push((replica, method.to_owned()));
        if method != "GET" {
            self.gate(replica).await;
            if self.failing.lock().contains(&replica) {
                return response(500, &status(500, "InternalError"));
            }
        } else if replica == 0
            && let Some(r) = self.race.lock().as_mut()
            && r.first_wrote
        {
            r.first_read_after = true;
        }
        match (method, path) {
            ("GET", LEASE) => match self.lease.lock().clone() {
                Some(l) => response(200, &l),
                None => response(404, &status(404, "NotFound")),
            },
            ("POST", LEASES) => {
                if self.lease.lock().is_some() {
                    return response(409, &status(409, "AlreadyExists"));
                }
                response(201, &self.store(body))
            }
            ("PUT", LEASE) => {
                let current = self.lease.lock().clone();
                let Some(current) = current else {
                    return response(404, &status(404, "NotFound"));
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return response(409, &status(409, "Conflict"));
                }
                response(200, &self.store(body))
            }
            _ => panic!(
                "unexpected {method} {path}: leader election gets, creates and updates its Lease only"
            ),
        }
    }
}

fn client(fake: &Arc<Fake>, replica: usize) -> Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let fake = fake.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let fake = fake.clone();
            // Each request on its own task: a held write must not hold up the replica's
            // other requests (the API server serves them concurrently too).
            tokio::spawn(async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let resp = fake
                    .handle(replica, parts.method.as_str(), parts.uri.path(), body)
                    .await;
                send.send_response(resp);
            });
        }
    });
    Client::new(svc, "system")
}

const RETRY: Duration = Duration::from_millis(100);
const RENEW: Duration = Duration::from_millis(1000);
const LEASE_DURATION: Duration = Duration::from_secs(2);

fn config(identity: &str) -> ElectionConfig {
    ElectionConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW,
        retry_period: RETRY,
        ..ElectionConfig::new("portcullis-controller", "system", identity)
    }
}

/// Replica `i`'s election, running: when it acquires, `leading` counts it until it loses.
struct Replica {
    acquired: tokio::sync::oneshot::Receiver<(Instant, Leadership)>,
}

fn start(
    fake: &Arc<Fake>,
    i: usize,
    leading: &Arc<AtomicUsize>,
    max: &Arc<AtomicUsize>,
) -> Replica {
    let client = client(fake, i);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (leading, max) = (leading.clone(), max.clone());
    tokio::spawn(async move {
        let mut leadership = acquire(client, config(&format!("controller-{i}")))
            .await
            .unwrap();
        let now = leading.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        let lost = leadership.lost();
        let leading2 = leading.clone();
        tokio::spawn(async move {
            lost.await;
            leading2.fetch_sub(1, Ordering::SeqCst);
        });
        let _ = tx.send((Instant::now(), leadership));
    });
    Replica { acquired: rx }
}

fn counters() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    (Arc::default(), Arc::default())
}

#[tokio::test]
async fn two_replicas_racing_for_a_free_lease_never_lead_at_once() {
    for existing in [true, false] {
        let fake = Arc::new(Fake::default());
        if existing {
            // Left by an earlier installation, released.
            fake.store(
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                              "metadata": {"name": "portcullis-controller", "namespace": "system"},
                              "spec": {}}),
            );
        }
        *fake.race.lock() = Some(Race::default());
        let (leading, max) = counters();
        let mut a = start(&fake, 0, &leading, &max);
        let mut b = start(&fake, 1, &leading, &max);
        // Longer than a lease: a wrongly elected second leader would have long noticed.
        tokio::time::sleep(LEASE_DURATION + RENEW).await;
        assert_eq!(
            max.load(Ordering::SeqCst),
            1,
            "two leaders at once (existing: {existing})"
        );
        assert_eq!(leading.load(Ordering::SeqCst), 1);
        // Kept until the end of the iteration: dropping a Leadership releases the Lease.
        let (a_got, b_got) = (a.acquired.try_recv().ok(), b.acquired.try_recv().ok());
        assert!(
            a_got.is_some() ^ b_got.is_some(),
            "exactly one leads (existing: {existing})"
        );
        let winner = if a_got.is_some() {
            "controller-0"
        } else {
            "controller-1"
        };
        assert_eq!(fake.holder().as_deref(), Some(winner));
        // Both wrote: the race really happened, and the API server refused one write.
        let log = fake.log.lock().clone();
        for i in 0..2 {
            assert!(
                log.iter().any(|(r, m)| *r == i && m != "GET"),
                "{i} never wrote: {log:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_released_lease_is_taken_over_within_a_retry_period() {
    let fake = Arc::new(Fake::default());
    let (leading, max) = counters();
    let a = start(&fake, 0, &leading, &max);
    let (_, leader) = a.acquired.await.unwrap();
    let mut b = start(&fake, 1, &leading, &max);
    tokio::time::sleep(LEASE_DURATION + RENEW).await;
    assert!(
        b.acquired.try_recv().is_err(),
        "the standby waits while the leader renews"
    );
    let released = Instant::now();
    leader.release().await;
    assert_eq!(fake.holder(), None, "released: no holder");
    let (at, _b) = tokio::time::timeout(LEASE_DURATION, b.acquired)
        .await
        .unwrap()
        .unwrap();
    let took = at - released;
    // Far inside the lease duration: it did not wait for the Lease to expire (a retry
    // period and its jitter, with room for a loaded machine).
    assert!(
        took <= RETRY * 6,
        "took over after {took:?}, not within a retry period"
    );
    assert_eq!(fake.holder().as_deref(), Some("controller-1"));
    assert_eq!(max.load(Ordering::SeqCst), 1);
    let lease = fake.lease.lock().clone().unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn a_crashed_leaders_lease_is_taken_over_once_it_expires_and_not_before() {
    let fake = Arc::new(Fake::default());
    let (leading, max) = counters();
    let a = start(&fake, 0, &leading, &max);
    let (_, leader) = a.acquired.await.unwrap();
    let b = start(&fake, 1, &leading, &max);
    tokio::time::sleep(RENEW).await;
    let crashed = Instant::now();
    leader.abandon();
    let (at, _b) = tokio::time::timeout(LEASE_DURATION * 3, b.acquired)
        .await
        .unwrap()
        .unwrap();
    let took = at - crashed;
    // The standby counts the lease duration from the last change it saw (the last renewal,
    // at most a retry period before the crash).
    assert!(
        took >= LEASE_DURATION - RETRY * 2,
        "took over after {took:?}: before it expired"
    );
    assert!(
        took <= LEASE_DURATION + RETRY * 8,
        "took over after {took:?}"
    );
    assert_eq!(fake.holder().as_deref(), Some("controller-1"));
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_a_standby_can_take_over() {
    let fake = Arc::new(Fake::default());
    let (leading, max) = counters();
    let a = start(&fake, 0, &leading, &max);
    let (_, _leader) = a.acquired.await.unwrap();
    let b = start(&fake, 1, &leading, &max);
    tokio::time::sleep(RETRY * 3).await;
    let failing = Instant::now();
    fake.failing.lock().push(0);
    // `start` counts a replica out of `leading` when its Leadership says it is lost.
    while leading.load(Ordering::SeqCst) != 0 {
        assert!(
            failing.elapsed() < LEASE_DURATION,
            "the leader never said it lost"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gave_up = Instant::now() - failing;
    let (at, _b) = tokio::time::timeout(LEASE_DURATION * 2, b.acquired)
        .await
        .unwrap()
        .unwrap();
    assert!(gave_up <= RENEW + RETRY * 4, "gave up after {gave_up:?}");
    assert!(
        at - failing > gave_up,
        "the standby took over ({:?}) before the leader gave up ({gave_up:?})",
        at - failing
    );
    assert_eq!(max.load(Ordering::SeqCst), 1);
}
