//! What the cluster recorded about a sandbox's pod: the core/v1 `Event`s whose
//! `involvedObject` is the pod (the scheduler's `Scheduled`, the kubelet's `Pulling`,
//! `Pulled`, `Failed`, `Created`, `Started`, `Unhealthy`, `Killing`), listed when the events
//! diagnostic asks, as `kubectl describe pod` does. They are not journaled: the API server
//! keeps them (about an hour by default), and the journal keeps what the pod watcher saw.
//! Async; knows nothing of the service.

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use super::{classify, objects, ObjectEvent, RuntimeError};

/// The field selector of one pod's events: by name and kind (a Secret or ConfigMap of the
/// same name has events of its own).
pub(super) fn selector(pod: &str) -> String {
    format!("involvedObject.name={pod},involvedObject.kind=Pod")
}

/// The events of pod `pod`, oldest first.
pub(super) async fn of_pod(api: Api<Event>, pod: &str) -> Result<Vec<ObjectEvent>, RuntimeError> {
    let list = api
        .list(&ListParams::default().fields(&selector(pod)))
        .await
        .map_err(|e| classify("list the pod's events", e))?;
    let mut events: Vec<ObjectEvent> = list.items.iter().map(object_event).collect();
    events.sort_by_key(|e| e.at);
    Ok(events)
}

/// The pod of sandbox `id`: the instance's, else the name a create gives it (a sandbox whose
/// create failed has no instance, and its pod's events outlive the pod).
pub(super) fn pod_of(id: &str, reference: Option<&str>) -> String {
    reference.map_or_else(|| objects::pod_name(id), str::to_owned)
}

/// One `Event` as the diagnostic shows it. Its time is the last occurrence: the series' (the
/// events.k8s.io/v1 shape), else `lastTimestamp` (the kubelet's core/v1 shape), else
/// `eventTime`, `firstTimestamp` or the object's creation.
pub(super) fn object_event(e: &Event) -> ObjectEvent {
    let at = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map_or(0, |t| t.as_millisecond());
    let count = e
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(e.count)
        .unwrap_or(1)
        .max(1);
    ObjectEvent {
        at,
        severity: e.type_.clone().unwrap_or_else(|| "Normal".into()),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_takes_its_last_time_type_and_count() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sbx-a.1", "namespace": "sbx", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "involvedObject": {"kind": "Pod", "name": "sbx-a"},
            "reason": "Unhealthy", "message": "Readiness probe failed: HTTP probe failed with statuscode: 503",
            "type": "Warning", "count": 4,
            "firstTimestamp": "2026-01-01T00:00:01Z", "lastTimestamp": "2026-01-01T00:00:09Z"
        }))
        .unwrap();
        let got = object_event(&e);
        assert_eq!(
            got,
            ObjectEvent {
                at: 1_767_225_609_000,
                severity: "Warning".into(),
                reason: "Unhealthy".into(),
                message: "Readiness probe failed: HTTP probe failed with statuscode: 503".into(),
                count: 4,
            }
        );
        // The newer shape: eventTime and a series, no count or lastTimestamp.
        let e: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sbx-a.2"}, "involvedObject": {"kind": "Pod", "name": "sbx-a"},
            "reason": "Pulled", "eventTime": "2026-01-01T00:00:02.500000Z",
            "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:05.000000Z"}
        }))
        .unwrap();
        let got = object_event(&e);
        assert_eq!(
            (got.at, got.count, got.severity.as_str()),
            (1_767_225_605_000, 2, "Normal")
        );
    }

    #[test]
    fn the_selector_names_the_pod_and_its_kind() {
        assert_eq!(
            selector("sbx-a"),
            "involvedObject.name=sbx-a,involvedObject.kind=Pod"
        );
        assert_eq!(pod_of("a", None), "sbx-a");
        assert_eq!(pod_of("a", Some("pool-x-1")), "pool-x-1");
    }
}
