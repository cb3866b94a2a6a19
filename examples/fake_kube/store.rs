//! The object store of OUR MODEL OF KUBERNETES (test-only; see docs/fake-kube.md): namespaced
//! objects as JSON, one monotonic `resourceVersion` counter for everything, a bounded history
//! of watch events, and a broadcast channel to the open watches. All methods are synchronous
//! and hold the one lock only briefly; nothing here knows HTTP or Docker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

/// A resource type the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// The URL segment: `pods`.
    pub plural: &'static str,
    /// `Pod`.
    pub kind: &'static str,
    /// `v1`, `apps/v1`.
    pub api_version: &'static str,
}

/// Every resource the fake knows; anything else is a 404.
pub const KINDS: &[Kind] = &[
    Kind {
        plural: "pods",
        kind: "Pod",
        api_version: "v1",
    },
    Kind {
        plural: "secrets",
        kind: "Secret",
        api_version: "v1",
    },
    Kind {
        plural: "configmaps",
        kind: "ConfigMap",
        api_version: "v1",
    },
    Kind {
        plural: "events",
        kind: "Event",
        api_version: "v1",
    },
    Kind {
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        api_version: "v1",
    },
    Kind {
        plural: "daemonsets",
        kind: "DaemonSet",
        api_version: "apps/v1",
    },
];

/// The kind served at `/api/v1/…` (`group_version` = `v1`) or `/apis/{group}/{version}/…`.
pub fn kind_of(group_version: &str, plural: &str) -> Option<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.plural == plural && k.api_version == group_version)
}

/// An apiserver error, sent as a `Status` body with `code` as the HTTP status.
#[derive(Debug, Clone)]
pub struct ApiErr {
    /// HTTP status.
    pub code: u16,
    /// The `reason` clients match on (`NotFound`, `AlreadyExists`, `Conflict`, …).
    pub reason: &'static str,
    /// Human-readable, shaped like the apiserver's.
    pub message: String,
}

impl ApiErr {
    pub fn not_found(kind: Kind, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", kind.plural),
        }
    }
    pub fn already_exists(kind: Kind, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", kind.plural),
        }
    }
    pub fn conflict(kind: Kind, name: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.plural
            ),
        }
    }
    pub fn invalid(message: String) -> Self {
        Self {
            code: 422,
            reason: "Invalid",
            message,
        }
    }
    pub fn bad_request(message: String) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message,
        }
    }
    pub fn gone(message: String) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message,
        }
    }
    /// The `Status` object.
    pub fn body(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

/// One change, as a watch reports it.
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub verb: &'static str,
    /// The object after the change (before it, with the new resourceVersion, for `DELETED`).
    pub object: Value,
}

/// What the open watches hear.
#[derive(Debug, Clone)]
pub enum Notice {
    Change(Arc<Change>),
    /// History was dropped (a test's `POST /fake-kube/compact`): every watch ends with 410.
    Compacted,
}

type Key = (&'static str, String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Every change after this resourceVersion is still in `history`; a watch from an
    /// older one gets 410 Gone.
    compacted_through: u64,
}

/// The objects and their history.
pub struct Store {
    inner: Mutex<Inner>,
    /// Subscribed to while the lock is held, so that a watch misses nothing between its
    /// replay of `history` and the live changes.
    tx: broadcast::Sender<Notice>,
    history_cap: usize,
}

/// Where a watch starts.
pub struct WatchStart {
    /// Replayed or synthetic changes to send first.
    pub initial: Vec<Arc<Change>>,
    /// The resourceVersion when the watch started (for the initial-events bookmark).
    pub rv: u64,
    pub rx: broadcast::Receiver<Notice>,
}

pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(now)
        .to_string()
}

/// What the apiserver does to every write: a Secret's `stringData` is merged into `data`
/// (base64) and dropped.
fn normalize(kind: Kind, obj: &mut Value) {
    use base64::Engine as _;
    if kind.plural != "secrets" {
        return;
    }
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in strings {
        let encoded = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
        obj["data"][k] = encoded.into();
    }
}

/// Whether a pod still has scheduling gates (`spec.schedulingGates` non-empty).
pub fn is_gated(pod: &Value) -> bool {
    pod.pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty())
}

fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is an object")
}

impl Store {
    pub fn new(history_cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted_through: 0,
            }),
            tx: broadcast::channel(4096).0,
            history_cap: history_cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (every write is one insert).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a change under the lock: next resourceVersion, history, broadcast.
    fn emit(&self, inner: &mut Inner, kind: Kind, ns: &str, verb: &'static str, mut object: Value) -> Value {
        inner.rv += 1;
        meta_mut(&mut object).insert("resourceVersion".into(), inner.rv.to_string().into());
        let change = Arc::new(Change {
            rv: inner.rv,
            kind,
            namespace: ns.to_owned(),
            verb,
            object: object.clone(),
        });
        inner.history.push_back(Arc::clone(&change));
        while inner.history.len() > self.history_cap {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted_through = old.rv;
            }
        }
        let _ = self.tx.send(Notice::Change(change));
        object
    }

    pub fn create(&self, kind: Kind, ns: &str, mut obj: Value) -> Result<Value, ApiErr> {
        if !obj.is_object() {
            return Err(ApiErr::bad_request("the body is not a JSON object".into()));
        }
        let name = match (meta(&obj, "name"), meta(&obj, "generateName")) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(prefix)) => format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..5]),
            _ => {
                return Err(ApiErr::invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value",
                    kind.plural
                )))
            }
        };
        let mut inner = self.lock();
        let key = (kind.plural, ns.to_owned(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiErr::already_exists(kind, &name));
        }
        normalize(kind, &mut obj);
        obj["kind"] = kind.kind.into();
        obj["apiVersion"] = kind.api_version.into();
        let m = meta_mut(&mut obj);
        m.insert("name".into(), name.into());
        m.insert("namespace".into(), ns.into());
        m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
        m.insert("creationTimestamp".into(), now().into());
        m.insert("generation".into(), 1.into());
        m.remove("deletionTimestamp");
        match kind.plural {
            // A gated pod is not scheduled (the docklet leaves it alone) until the last gate
            // is removed, as kube-scheduler does (KEP-3521).
            "pods" if is_gated(&obj) => {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort",
                    "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
                        "message": "Scheduling is blocked due to non-empty scheduling gates",
                        "lastTransitionTime": now()}]})
            }
            "pods" => {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort",
                    "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]})
            }
            "persistentvolumeclaims" => obj["status"] = json!({"phase": "Bound"}),
            _ => {}
        }
        let obj = self.emit(&mut inner, kind, ns, "ADDED", obj);
        inner.objects.insert(key, obj.clone());
        Ok(obj)
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiErr> {
        self.lock()
            .objects
            .get(&(kind.plural, ns.to_owned(), name.to_owned()))
            .cloned()
            .ok_or_else(|| ApiErr::not_found(kind, name))
    }

    /// The matching objects (all namespaces when `ns` is `None`) and the current version.
    pub fn list(&self, kind: Kind, ns: Option<&str>, sel: &Selectors) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((plural, n, _), o)| {
                *plural == kind.plural && ns.is_none_or(|ns| ns == n) && sel.matches(o)
            })
            .map(|(_, o)| o.clone())
            .collect();
        (items, inner.rv)
    }

    /// Replaces an object (PUT) or applies `edit` to a copy of it (PATCH), honouring a
    /// `metadata.resourceVersion` in the result (409 when stale). `status_only`: the
    /// `/status` subresource, which changes nothing but `status`; otherwise a pod's
    /// `status` is kept (the docklet owns it).
    pub fn update(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        status_only: bool,
        edit: impl FnOnce(Value) -> Result<Value, ApiErr>,
    ) -> Result<Value, ApiErr> {
        let mut inner = self.lock();
        let key = (kind.plural, ns.to_owned(), name.to_owned());
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiErr::not_found(kind, name))?;
        let mut next = edit(current.clone())?;
        if !next.is_object() {
            return Err(ApiErr::bad_request("the result is not a JSON object".into()));
        }
        match meta(&next, "resourceVersion") {
            Some(rv) if Some(&rv) != meta(&current, "resourceVersion").as_ref() => {
                return Err(ApiErr::conflict(kind, name))
            }
            _ => {}
        }
        if status_only {
            let status = next.get("status").cloned().unwrap_or(Value::Null);
            next = current.clone();
            next["status"] = status;
        } else if kind.plural == "pods" {
            next["status"] = current.get("status").cloned().unwrap_or(Value::Null);
            // The apiserver lets an update only remove scheduling gates.
            let gates = |p: &Value| {
                p.pointer("/spec/schedulingGates")
                    .and_then(Value::as_array)
                    .cloned()
            };
            let before = gates(&current).unwrap_or_default();
            if let Some(added) = gates(&next)
                .unwrap_or_default()
                .iter()
                .find(|g| !before.contains(g))
            {
                return Err(ApiErr::invalid(format!(
                    "Pod \"{name}\" is invalid: spec.schedulingGates: Forbidden: only deletion is allowed, but found new scheduling gate '{}'",
                    added.get("name").and_then(Value::as_str).unwrap_or_default()
                )));
            }
        }
        normalize(kind, &mut next);
        // What the client may not change.
        next["kind"] = kind.kind.into();
        next["apiVersion"] = kind.api_version.into();
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match current.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta_mut(&mut next).insert(field.into(), v.clone()),
                None => meta_mut(&mut next).remove(field),
            };
        }
        if next == current {
            return Ok(current);
        }
        if next.get("spec") != current.get("spec") {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                + 1;
            meta_mut(&mut next).insert("generation".into(), generation.into());
        }
        let next = self.emit(&mut inner, kind, ns, "MODIFIED", next);
        inner.objects.insert(key, next.clone());
        Ok(next)
    }

    /// Marks a pod as being deleted (the docklet removes it once its containers are gone).
    pub fn mark_deleting(&self, ns: &str, name: &str, grace: i64) -> Result<Value, ApiErr> {
        let pods = kind_of("v1", "pods").expect("pods are served");
        let mut inner = self.lock();
        let key = (pods.plural, ns.to_owned(), name.to_owned());
        let mut pod = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiErr::not_found(pods, name))?;
        if meta(&pod, "deletionTimestamp").is_some() {
            return Ok(pod);
        }
        let m = meta_mut(&mut pod);
        m.insert("deletionTimestamp".into(), now().into());
        m.insert("deletionGracePeriodSeconds".into(), grace.into());
        let pod = self.emit(&mut inner, pods, ns, "MODIFIED", pod);
        inner.objects.insert(key, pod.clone());
        Ok(pod)
    }

    /// Removes an object (when `uid` is given, only that incarnation of it), then, as the
    /// garbage collector, every object left without an existing owner. Returns what was
    /// removed, the object itself first.
    pub fn remove(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<Vec<(Kind, Value)>, ApiErr> {
        let mut inner = self.lock();
        let key = (kind.plural, ns.to_owned(), name.to_owned());
        let obj = inner
            .objects
            .get(&key)
            .ok_or_else(|| ApiErr::not_found(kind, name))?;
        if uid.is_some_and(|u| meta(obj, "uid").as_deref() != Some(u)) {
            return Err(ApiErr::not_found(kind, name));
        }
        let obj = inner.objects.remove(&key).expect("present");
        let mut removed = vec![(kind, self.emit(&mut inner, kind, ns, "DELETED", obj))];
        loop {
            let uids: std::collections::HashSet<String> =
                inner.objects.values().filter_map(|o| meta(o, "uid")).collect();
            let orphans: Vec<Key> = inner
                .objects
                .iter()
                // Pods need the docklet's teardown, so the fake never collects them.
                .filter(|((plural, _, _), o)| {
                    let owners = o.pointer("/metadata/ownerReferences").and_then(Value::as_array);
                    *plural != "pods"
                        && owners.is_some_and(|owners| {
                            !owners.is_empty()
                                && owners.iter().all(|r| {
                                    r.get("uid")
                                        .and_then(Value::as_str)
                                        .is_none_or(|u| !uids.contains(u))
                                })
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                break;
            }
            for key in orphans {
                let obj = inner.objects.remove(&key).expect("present");
                let kind = KINDS
                    .iter()
                    .copied()
                    .find(|k| k.plural == key.0)
                    .expect("known kind");
                removed.push((kind, self.emit(&mut inner, kind, &key.1, "DELETED", obj)));
            }
        }
        Ok(removed)
    }

    /// Applies `edit` to a pod's `status` when the pod with `uid` still exists; a change
    /// is a `MODIFIED` event.
    pub fn set_pod_status(&self, ns: &str, name: &str, uid: &str, status: Value) {
        let pods = kind_of("v1", "pods").expect("pods are served");
        let mut inner = self.lock();
        let key = (pods.plural, ns.to_owned(), name.to_owned());
        let Some(pod) = inner.objects.get(&key) else {
            return;
        };
        if meta(pod, "uid").as_deref() != Some(uid) || pod.get("status") == Some(&status) {
            return;
        }
        let mut pod = pod.clone();
        pod["status"] = status;
        let pod = self.emit(&mut inner, pods, ns, "MODIFIED", pod);
        inner.objects.insert(key, pod);
    }

    /// Where a watch from `rv` starts: `None` (or 0) is "now", with the current objects as
    /// synthetic `ADDED` events; a version older than the history is 410 Gone.
    pub fn watch(
        &self,
        kind: Kind,
        ns: Option<&str>,
        rv: Option<u64>,
        sel: &Selectors,
    ) -> Result<WatchStart, ApiErr> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let matches =
            |c: &Change| c.kind == kind && ns.is_none_or(|n| n == c.namespace) && sel.matches(&c.object);
        let initial = match rv.filter(|rv| *rv > 0) {
            None => inner
                .objects
                .iter()
                .filter(|((plural, n, _), o)| {
                    *plural == kind.plural && ns.is_none_or(|ns| ns == n) && sel.matches(o)
                })
                .map(|((_, n, _), o)| {
                    let rv = meta(o, "resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    Arc::new(Change {
                        rv,
                        kind,
                        namespace: n.clone(),
                        verb: "ADDED",
                        object: o.clone(),
                    })
                })
                .collect(),
            Some(rv) if rv < inner.compacted_through => {
                return Err(ApiErr::gone(format!(
                    "too old resource version: {rv} ({})",
                    inner.compacted_through
                )))
            }
            Some(rv) => inner
                .history
                .iter()
                .filter(|c| c.rv > rv && matches(c))
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            initial,
            rv: inner.rv,
            rx,
        })
    }

    /// Drops the history: watches end with 410 and must re-list (a test hook, standing in
    /// for etcd compaction).
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.compacted_through = inner.rv;
        let _ = self.tx.send(Notice::Compacted);
    }
}

/// Equality-based label and field selectors (`a=b`, `a==b`, `a!=b`, and for labels `a`,
/// `!a`); set-based label selectors (`in`, `notin`) are refused with 400.
#[derive(Debug, Default, Clone)]
pub struct Selectors {
    labels: Vec<(String, Op)>,
    fields: Vec<(String, Op)>,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl Selectors {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiErr> {
        Ok(Self {
            labels: parse_terms(labels, true)?,
            fields: parse_terms(fields, false)?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let field = |path: &str| {
            let pointer = format!("/{}", path.replace('.', "/"));
            match obj.pointer(&pointer) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(v) => Some(v.to_string()),
            }
        };
        self.labels.iter().all(|(k, op)| op.holds(label(k)))
            && self
                .fields
                .iter()
                .all(|(k, op)| op.holds(field(k).or(Some(String::new()))))
    }
}

impl Op {
    fn holds(&self, value: Option<String>) -> bool {
        match self {
            Op::Eq(want) => value.as_deref() == Some(want),
            Op::Ne(want) => value.as_deref() != Some(want),
            Op::Exists => value.is_some(),
            Op::Absent => value.is_none(),
        }
    }
}

fn parse_terms(text: Option<&str>, labels: bool) -> Result<Vec<(String, Op)>, ApiErr> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|term| {
            let term = term.trim();
            let unsupported = || {
                ApiErr::bad_request(format!("unable to parse requirement {term:?}: the fake apiserver supports equality selectors only"))
            };
            if term.contains(' ') || term.contains('(') {
                return Err(unsupported());
            }
            if let Some((k, v)) = term.split_once("!=") {
                Ok((k.to_owned(), Op::Ne(v.to_owned())))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Ok((k.to_owned(), Op::Eq(v.to_owned())))
            } else if !labels {
                Err(unsupported())
            } else if let Some(k) = term.strip_prefix('!') {
                Ok((k.to_owned(), Op::Absent))
            } else {
                Ok((term.to_owned(), Op::Exists))
            }
        })
        .collect()
}
