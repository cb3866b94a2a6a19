//! The event journal (design §14.2): what sandboxd records of each sandbox, what the runtime
//! reports of its containers (one long-lived consumer of the runtime's event stream), reads
//! and follows of a journal, and the retention sweep that drops journals of deleted sandboxes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;

use super::{Service, REQUEST_ID};
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::Error;
use crate::orchestrator::runtime::{Observed, RuntimeEvent, RuntimeEventKind, RuntimeKind};
use crate::orchestrator::store::{Event, EventType, NewEvent, Source};
use crate::wire::events::{SandboxEvent, SandboxEventList};
use crate::wire::time::{format_ms, now_ms};

/// The most events one page of a journal holds.
pub const MAX_PAGE: usize = 1000;
/// Events read from the store at a time while following.
const FOLLOW_BATCH: usize = 100;
/// The longest wait before the runtime's event stream is opened again after it broke.
const MAX_RECONNECT: Duration = Duration::from_secs(30);

impl Service {
    /// Appends an event sandboxd itself reports, with the current request's id; a failure is
    /// logged, never the caller's.
    pub(super) async fn log_event(&self, id: &str, kind: EventType, message: impl Into<String>) {
        self.log_event_because(id, kind, None, message).await;
    }

    /// [`Service::log_event`] with a reason.
    pub(super) async fn log_event_because(
        &self,
        id: &str,
        kind: EventType,
        reason: Option<String>,
        message: impl Into<String>,
    ) {
        let event = NewEvent {
            at: now_ms(),
            kind,
            reason,
            message: message.into(),
            source: Source::Sandboxd,
            exit_code: None,
            request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        };
        self.append_event(id, event).await;
    }

    /// Appends `event` and wakes the journal's followers; a failure is logged.
    pub(super) async fn append_event(&self, id: &str, event: NewEvent) {
        match self.store.append_event(id, event).await {
            Ok(seq) => {
                self.journal.send_replace(seq);
            }
            Err(e) => tracing::warn!(sandbox = id, error = %e, "cannot record event"),
        }
    }

    /// Records what the runtime reports of sandboxes' containers, reconnecting when its event
    /// stream breaks (resuming where it left off). Runs until the process ends.
    pub async fn run_runtime_events(&self) {
        let mut since = None;
        let mut last: Option<RuntimeEvent> = None;
        let mut pause = Duration::from_millis(100);
        loop {
            let opened = now_ms();
            let mut events = self.runtime.events(since);
            while let Some(item) = events.next().await {
                match item {
                    Ok(event) => {
                        pause = Duration::from_millis(100);
                        // A resumed stream repeats what happened at the instant it resumes from.
                        if last.as_ref().is_some_and(|l| event.at < l.at || *l == event) {
                            continue;
                        }
                        self.note_runtime_event(&event).await;
                        last = Some(event);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the runtime's event stream broke; reopening");
                        break;
                    }
                }
            }
            since = Some(last.as_ref().map_or(opened, |l| l.at));
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RECONNECT);
        }
    }

    /// Journals one runtime event of a sandbox's container.
    pub(super) async fn note_runtime_event(&self, event: &RuntimeEvent) {
        let Some(label) = &event.sandbox_id else {
            return;
        };
        let Some(id) = self.journal_of(label).await else {
            return;
        };
        let id = &id;
        let (kind, reason, message, exit_code) = match &event.kind {
            RuntimeEventKind::Started => (EventType::Started, None, "the container started".to_owned(), None),
            RuntimeEventKind::Died { code } => (
                EventType::Exited,
                Some(if *code == Some(0) { "Completed" } else { "Error" }.to_owned()),
                format!(
                    "the container exited with code {}",
                    code.map_or_else(|| "unknown".to_owned(), |c| c.to_string())
                ),
                *code,
            ),
            RuntimeEventKind::Oom => (
                EventType::OomKilled,
                Some("OOMKilled".to_owned()),
                "a process was killed for exceeding the memory limit".to_owned(),
                None,
            ),
            RuntimeEventKind::Killed { signal } => (
                EventType::Killed,
                signal.clone(),
                format!(
                    "the container was sent signal {}",
                    signal.as_deref().unwrap_or("(unknown)")
                ),
                None,
            ),
            RuntimeEventKind::Paused => (
                EventType::Paused,
                None,
                "the container was frozen".to_owned(),
                None,
            ),
            RuntimeEventKind::Unpaused => (
                EventType::Resumed,
                None,
                "the container was thawed".to_owned(),
                None,
            ),
        };
        tracing::debug!(sandbox = %id, event = kind.as_str(), "runtime event");
        self.append_event(
            id,
            NewEvent {
                at: event.at,
                kind,
                reason,
                message,
                source: self.runtime_source(),
                exit_code,
                request_id: None,
            },
        )
        .await;
        if let RuntimeEventKind::Died { .. } = event.kind {
            self.note_oom_after_exit(id, &event.reference, event.at).await;
        }
    }

    /// Who reports the runtime's events: the Docker engine, or the Kubernetes runtime's pod
    /// watch.
    fn runtime_source(&self) -> Source {
        match self.runtime.kind() {
            RuntimeKind::Kubernetes => Source::Kubernetes,
            _ => Source::Docker,
        }
    }

    /// The journal the events of a container labelled `label` go to: its sandbox's, or for a
    /// warm pool's member, the sandbox it was allocated to (an idle member has none).
    async fn journal_of(&self, label: &str) -> Option<String> {
        if let Ok(Some(_)) = self.store.get(label).await {
            return Some(label.to_owned());
        }
        let members = self.store.members().await.ok()?;
        match members.into_iter().flatten().find(|m| m.id == label) {
            Some(member) => member.sandbox_id,
            // A sandbox deleted meanwhile (its journal is kept), or one never recorded.
            None => Some(label.to_owned()),
        }
    }

    /// Engines on cgroup v2 may not report an OOM kill as an event of its own; the container's
    /// state says so after it died. Records `OOMKilled` when it does and nothing did yet.
    async fn note_oom_after_exit(&self, id: &str, reference: &str, at: i64) {
        let Ok(Some(info)) = self.runtime.container(reference).await else {
            return;
        };
        if !matches!(info.observed, Observed::Exited { oom: true, .. }) {
            return;
        }
        let Ok(events) = self.store.events(id).await else {
            return;
        };
        let since_start = events
            .iter()
            .rev()
            .take_while(|e| e.kind != EventType::Started.as_str());
        if since_start
            .into_iter()
            .any(|e| e.kind == EventType::OomKilled.as_str())
        {
            return;
        }
        self.append_event(
            id,
            NewEvent {
                at,
                kind: EventType::OomKilled,
                reason: Some("OOMKilled".to_owned()),
                message: "the container was killed for exceeding its memory limit".to_owned(),
                source: self.runtime_source(),
                exit_code: None,
                request_id: None,
            },
        )
        .await;
    }

    /// Drops the journals of sandboxes deleted more than the retention period ago.
    pub async fn sweep_events(&self) -> Result<usize, Error> {
        let retention = i64::try_from(self.diagnostics.retention.as_millis()).unwrap_or(i64::MAX);
        let dropped = self
            .store
            .sweep_events(now_ms().saturating_sub(retention))
            .await?;
        if dropped > 0 {
            tracing::info!(dropped, "old event journals dropped");
        }
        Ok(dropped)
    }

    /// Whether `caller` may read sandbox `id`'s journal: the sandbox's owner (or an admin), or
    /// after the delete, the journal's.
    async fn journal_readable(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        if let Some(record) = self.store.get(id).await? {
            return if caller.may_see(&record.owner) {
                Ok(())
            } else {
                Err(Error::no_sandbox(id))
            };
        }
        match self.store.journal_owner(id).await? {
            Some(owner) if caller.may_see(&owner) => Ok(()),
            _ => Err(Error::no_sandbox(id)),
        }
    }

    /// `GET /sandboxes/{id}/events?since=&limit=`: up to `limit` events after `since`.
    pub async fn journal(
        &self,
        id: &str,
        since: i64,
        limit: usize,
        caller: &Principal,
    ) -> Result<SandboxEventList, Error> {
        self.journal_readable(id, caller).await?;
        let items: Vec<SandboxEvent> = self
            .store
            .events_after(id, since, limit)
            .await?
            .into_iter()
            .map(wire_event)
            .collect();
        let next_since = items.last().map_or(since, |e| e.seq);
        Ok(SandboxEventList { items, next_since })
    }

    /// `GET /sandboxes/{id}/events?follow=true`: the events after `since`, then each new one
    /// as it is recorded. Ends after the sandbox's `Deleted` event (or at once for a journal
    /// whose sandbox is gone).
    pub async fn follow_journal(
        self: &Arc<Self>,
        id: &str,
        since: i64,
        caller: &Principal,
    ) -> Result<BoxStream<'static, SandboxEvent>, Error> {
        self.journal_readable(id, caller).await?;
        let follow = Follow {
            service: self.clone(),
            id: id.to_owned(),
            cursor: since,
            pending: VecDeque::new(),
            changes: self.journal.subscribe(),
            ended: false,
            gone: false,
        };
        Ok(futures_util::stream::unfold(follow, Follow::next).boxed())
    }
}

/// A follower of one journal.
struct Follow {
    service: Arc<Service>,
    id: String,
    cursor: i64,
    pending: VecDeque<Event>,
    /// The newest `seq` of any journal: wakes the follower to look again.
    changes: tokio::sync::watch::Receiver<i64>,
    /// The `Deleted` event was delivered.
    ended: bool,
    /// The sandbox was seen gone: one more read, then the end.
    gone: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(SandboxEvent, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.cursor = event.seq;
                self.ended |= event.kind == EventType::Deleted.as_str();
                return Some((wire_event(event), self));
            }
            if self.ended {
                return None;
            }
            // Marked seen before the read: whatever is appended after it wakes the wait.
            self.changes.borrow_and_update();
            match self
                .service
                .store
                .events_after(&self.id, self.cursor, FOLLOW_BATCH)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    self.pending.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %self.id, error = %e, "cannot read events to follow");
                    return None;
                }
            }
            match self.service.store.get(&self.id).await {
                Ok(Some(_)) => {}
                // Gone, and everything it left was delivered.
                Ok(None) if self.gone => return None,
                // Gone since the read: its last events may have come meanwhile.
                Ok(None) => {
                    self.gone = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(sandbox = %self.id, error = %e, "cannot read a followed sandbox");
                    return None;
                }
            }
            if self.changes.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// A stored event on the wire.
fn wire_event(e: Event) -> SandboxEvent {
    SandboxEvent {
        seq: e.seq,
        at: format_ms(e.at),
        kind: e.kind,
        reason: e.reason,
        message: e.message,
        source: e.source,
        exit_code: e.exit_code,
        request_id: e.request_id,
    }
}

/// One event as a line of the events diagnostic: `<time> <Type>[(<code>)] [<source>]
/// <message>[ (request <id>)]`.
pub(super) fn event_line(e: &Event) -> String {
    let mut line = format!("{} {}", format_ms(e.at), e.kind);
    if let Some(code) = e.exit_code {
        line.push_str(&format!("({code})"));
    }
    line.push_str(&format!(" [{}] {}", e.source, e.message));
    if let Some(id) = &e.request_id {
        line.push_str(&format!(" (request {id})"));
    }
    line
}
