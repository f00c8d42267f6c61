//! Notification counts: a level per event for most members, offsets per member for the rest.
//!
//! An event's push rules give the same answer for nearly every member of its room, so that
//! answer (`events.notify`: 0 none, 1 notify, 2 notify and highlight) is stored once and
//! summed per room (`rooms.notify_seq`, `rooms.highlight_seq`). A joined local member's
//! unread count is the room's sum minus their offset (`notification_offsets`). The offset
//! moves only where the member's answer differs from the event's (their own events, and the
//! `push_exceptions`: mentions, their own rules) and when a read receipt covers events. A
//! message thus costs a row per sender and per exception, not a row per member.

use std::collections::HashMap;

use sqlx::{Any, Row, Transaction};

use super::{
    StoreResult,
    script::{Script, list, rows},
    sql,
};

/// Notification level of an answer: 0 none, 1 notify, 2 notify and highlight.
pub type Level = i64;

/// How a local member's offset moves in a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetChange {
    /// Added to the offset: `(notify, highlight)`.
    Delta(i64, i64),
    /// The member joined at `since_pos`: the offset becomes the room's sums before the
    /// write plus `(notify, highlight)`.
    Reset { since_pos: i64, notify: i64, highlight: i64 },
    /// The member left: the row goes.
    Left,
}

/// The notification bookkeeping of a room write.
#[derive(Debug, Default, Clone)]
pub struct Notifications {
    /// What the write adds to the room's sums: `(notify, highlight)`.
    pub generic: (i64, i64),
    /// `(user, event position, level)` where a member's answer differs from the event's.
    pub exceptions: Vec<(String, i64, Level)>,
    /// One change per member, whatever happened to them in the write.
    pub offsets: HashMap<String, OffsetChange>,
}

impl Notifications {
    /// Whether the write changes no count.
    pub fn is_empty(&self) -> bool {
        self.generic == (0, 0) && self.exceptions.is_empty() && self.offsets.is_empty()
    }

    /// Counts an event whose level for most members is `level`.
    pub fn add_event(&mut self, level: Level) {
        self.generic.0 += i64::from(level >= 1);
        self.generic.1 += i64::from(level >= 2);
    }

    /// Records that `user` gets `actual` where the event's level is `generic`.
    pub fn differ(&mut self, user: &str, generic: Level, actual: Level) {
        let (n, h) =
            (i64::from(generic >= 1) - i64::from(actual >= 1), i64::from(generic >= 2) - i64::from(actual >= 2));
        if (n, h) == (0, 0) {
            return;
        }
        match self.offsets.entry(user.to_owned()).or_insert(OffsetChange::Delta(0, 0)) {
            OffsetChange::Delta(dn, dh) | OffsetChange::Reset { notify: dn, highlight: dh, .. } => {
                *dn += n;
                *dh += h;
            }
            OffsetChange::Left => {}
        }
    }

    /// `user` joined at `since_pos`, after the events counted so far: their count starts at 0.
    pub fn joined(&mut self, user: &str, since_pos: i64) {
        let (notify, highlight) = self.generic;
        self.offsets.insert(user.to_owned(), OffsetChange::Reset { since_pos, notify, highlight });
    }

    /// `user` left.
    pub fn left(&mut self, user: &str) {
        self.offsets.insert(user.to_owned(), OffsetChange::Left);
    }

    /// Appends the bookkeeping of a write built on this one.
    pub fn append(&mut self, next: Notifications) {
        for (user, change) in next.offsets {
            let change = match change {
                OffsetChange::Reset { since_pos, notify, highlight } => OffsetChange::Reset {
                    since_pos,
                    notify: notify + self.generic.0,
                    highlight: highlight + self.generic.1,
                },
                other => other,
            };
            match (self.offsets.get_mut(&user), change) {
                (
                    Some(OffsetChange::Delta(n, h) | OffsetChange::Reset { notify: n, highlight: h, .. }),
                    OffsetChange::Delta(dn, dh),
                ) => {
                    *n += dn;
                    *h += dh;
                }
                (Some(OffsetChange::Left), OffsetChange::Delta(..)) => {}
                (_, change) => {
                    self.offsets.insert(user, change);
                }
            }
        }
        self.generic.0 += next.generic.0;
        self.generic.1 += next.generic.1;
        self.exceptions.extend(next.exceptions);
    }
}

/// Adds the offset and exception statements of a room write. They must come before the
/// statement that moves the room's sums: a join's offset reads the sums as they were.
pub(super) fn push_statements(script: &mut Script, room_id: &str, n: &Notifications) {
    let mut resets = Vec::new();
    let mut deltas = Vec::new();
    let mut left = Vec::new();
    for (user, change) in &n.offsets {
        match *change {
            OffsetChange::Reset { since_pos, notify, highlight } => resets.push((user, since_pos, notify, highlight)),
            OffsetChange::Delta(0, 0) => {}
            OffsetChange::Delta(notify, highlight) => deltas.push((user, notify, highlight)),
            OffsetChange::Left => left.push(user),
        }
    }
    for chunk in resets.chunks(100) {
        let row = "(?, ?, COALESCE((SELECT notify_seq FROM rooms WHERE room_id = ?), 0) + ?, \
                   COALESCE((SELECT highlight_seq FROM rooms WHERE room_id = ?), 0) + ?, ?)";
        let statement = script.push(format!(
            "INSERT INTO notification_offsets (user_id, room_id, notify_off, highlight_off, since_pos) VALUES {} \
             ON CONFLICT (user_id, room_id) DO UPDATE SET notify_off = excluded.notify_off, \
             highlight_off = excluded.highlight_off, since_pos = excluded.since_pos",
            vec![row; chunk.len()].join(", ")
        ));
        for (user, since_pos, notify, highlight) in chunk {
            statement
                .bind(*user)
                .bind(room_id)
                .bind(room_id)
                .bind(*notify)
                .bind(room_id)
                .bind(*highlight)
                .bind(*since_pos);
        }
    }
    for chunk in deltas.chunks(100) {
        let statement = script.push(format!(
            "UPDATE notification_offsets SET notify_off = notify_off + v.column2, \
             highlight_off = highlight_off + v.column3 FROM (VALUES {}) AS v \
             WHERE notification_offsets.room_id = ? AND notification_offsets.user_id = v.column1",
            rows(chunk.len(), 3)
        ));
        for (user, notify, highlight) in chunk {
            statement.bind(*user).bind(*notify).bind(*highlight);
        }
        statement.bind(room_id);
    }
    for chunk in left.chunks(100) {
        let statement = script
            .push(format!("DELETE FROM notification_offsets WHERE room_id = ? AND user_id IN ({})", list(chunk.len())));
        statement.bind(room_id);
        for user in chunk {
            statement.bind(*user);
        }
    }
    for chunk in n.exceptions.chunks(100) {
        let statement = script.push(format!(
            "INSERT INTO push_exceptions (user_id, room_id, event_pos, level) VALUES {} ON CONFLICT DO NOTHING",
            rows(chunk.len(), 4)
        ));
        for (user, pos, level) in chunk {
            statement.bind(user).bind(room_id).bind(*pos).bind(*level);
        }
    }
}

/// The receipt types that clear notifications.
const READ_TYPES: &str = "('m.read', 'm.read.private')";

/// Takes the notifications a new read receipt covers off the member's count, inside the
/// receipt's transaction. `old` is the member's read receipts before this one, per thread
/// (`""` unthreaded, `"main"`, or a thread root), and `since_pos` their join.
pub(super) async fn cover(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
    user_id: &str,
    thread_id: &str,
    event_pos: i64,
    old: &HashMap<String, i64>,
    since_pos: i64,
) -> StoreResult<()> {
    let unthreaded = old.get("").copied().unwrap_or(0);
    let (lo, condition, thread) = match thread_id {
        // Events of a thread already read through a threaded receipt were already covered.
        "" => (
            unthreaded.max(since_pos),
            format!(
                "NOT EXISTS (SELECT 1 FROM receipts r WHERE r.room_id = e.room_id AND r.user_id = $1 \
                 AND r.receipt_type IN {READ_TYPES} AND r.thread_id = COALESCE(e.thread_root, 'main') \
                 AND r.event_pos >= e.stream_pos)"
            ),
            None,
        ),
        "main" => (
            old.get("main").copied().unwrap_or(0).max(unthreaded).max(since_pos),
            "e.thread_root IS NULL".to_owned(),
            None,
        ),
        root => (
            old.get(root).copied().unwrap_or(0).max(unthreaded).max(since_pos),
            "e.thread_root = $5".to_owned(),
            Some(root),
        ),
    };
    if event_pos <= lo {
        return Ok(());
    }
    let text = format!(
        "SELECT CAST(COALESCE(SUM(CASE WHEN lvl >= 1 THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN lvl >= 2 THEN 1 ELSE 0 END), 0) AS BIGINT) FROM ( \
         SELECT COALESCE(x.level, CASE WHEN e.sender = $1 THEN 0 ELSE e.notify END) AS lvl FROM events e \
         LEFT JOIN push_exceptions x ON x.user_id = $1 AND x.room_id = e.room_id AND x.event_pos = e.stream_pos \
         WHERE e.room_id = $2 AND e.stream_pos > $3 AND e.stream_pos <= $4 AND {condition}) t"
    );
    let mut query = sqlx::query(sql(text)).bind(user_id).bind(room_id).bind(lo).bind(event_pos);
    if let Some(root) = thread {
        query = query.bind(root);
    }
    let row = query.fetch_one(&mut **tx).await?;
    let (notify, highlight): (i64, i64) = (row.get(0), row.get(1));
    // Exceptions are only read for events no receipt covers yet: those now covered go.
    let covered = match thread {
        _ if thread_id.is_empty() => String::new(),
        None => " AND event_pos IN (SELECT stream_pos FROM events WHERE room_id = $2 AND stream_pos <= $3 \
                  AND thread_root IS NULL)"
            .to_owned(),
        Some(_) => " AND event_pos IN (SELECT stream_pos FROM events WHERE room_id = $2 AND stream_pos <= $3 \
                     AND thread_root = $4)"
            .to_owned(),
    };
    let mut delete = sqlx::query(sql(format!(
        "DELETE FROM push_exceptions WHERE user_id = $1 AND room_id = $2 AND event_pos <= $3{covered}"
    )))
    .bind(user_id)
    .bind(room_id)
    .bind(event_pos);
    if let Some(root) = thread {
        delete = delete.bind(root);
    }
    delete.execute(&mut **tx).await?;
    if (notify, highlight) != (0, 0) {
        sqlx::query(
            "UPDATE notification_offsets SET notify_off = notify_off + $3, highlight_off = highlight_off + $4 \
             WHERE user_id = $1 AND room_id = $2",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(notify)
        .bind(highlight)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Locks a member's offset row for a receipt (two receipts of one member must not both
/// cover the same events) and returns their join position, or `None` if they have no
/// count in the room, and their read receipts per thread.
pub(super) async fn lock_member(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
    user_id: &str,
) -> StoreResult<Option<(i64, HashMap<String, i64>)>> {
    let since: Option<i64> = sqlx::query_scalar(
        "UPDATE notification_offsets SET notify_off = notify_off WHERE user_id = $1 AND room_id = $2 \
         RETURNING since_pos",
    )
    .bind(user_id)
    .bind(room_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(since) = since else { return Ok(None) };
    let old = sqlx::query(sql(format!(
        "SELECT thread_id, CAST(MAX(event_pos) AS BIGINT) FROM receipts WHERE room_id = $1 AND user_id = $2 \
         AND receipt_type IN {READ_TYPES} GROUP BY thread_id"
    )))
    .bind(room_id)
    .bind(user_id)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
    .collect();
    Ok(Some((since, old)))
}

impl super::Store {
    /// A member's unread notifications and highlights per thread of a room (events whose
    /// level for them notifies, after their unthreaded receipt and the thread's own), for
    /// clients that ask for `unread_thread_notifications`.
    pub async fn thread_notification_counts(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> StoreResult<HashMap<String, (i64, i64)>> {
        let rows = sqlx::query(sql(format!(
            "SELECT e.thread_root, CAST(COUNT(*) AS BIGINT), \
             CAST(SUM(CASE WHEN COALESCE(x.level, e.notify) >= 2 THEN 1 ELSE 0 END) AS BIGINT) \
             FROM events e \
             JOIN notification_offsets o ON o.user_id = $1 AND o.room_id = e.room_id \
             LEFT JOIN push_exceptions x ON x.user_id = $1 AND x.room_id = e.room_id AND x.event_pos = e.stream_pos \
             WHERE e.room_id = $2 AND e.thread_root IS NOT NULL AND e.sender <> $1 AND e.stream_pos > o.since_pos \
             AND COALESCE(x.level, e.notify) >= 1 \
             AND e.stream_pos > COALESCE((SELECT MAX(r.event_pos) FROM receipts r WHERE r.room_id = e.room_id \
                 AND r.user_id = $1 AND r.receipt_type IN {READ_TYPES} \
                 AND (r.thread_id = '' OR r.thread_id = e.thread_root)), -1) \
             GROUP BY e.thread_root"
        )))
        .bind(user_id)
        .bind(room_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get::<String, _>(0), (r.get::<i64, _>(1), r.get::<i64, _>(2)))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_in_an_appended_write_counts_from_the_sums_before_the_whole_commit() {
        let mut first = Notifications::default();
        first.add_event(1);
        first.add_event(2);
        first.differ("@a:x", 1, 0);
        let mut second = Notifications::default();
        second.add_event(1);
        second.joined("@b:x", 10);
        second.add_event(1);
        second.differ("@b:x", 1, 2);
        second.differ("@a:x", 1, 0);
        first.append(second);
        assert_eq!(first.generic, (4, 1));
        // @b: the sums before the commit, plus the three events up to the join, then one
        // that notified and highlighted them where the others only got a notification.
        assert_eq!(first.offsets["@b:x"], OffsetChange::Reset { since_pos: 10, notify: 3, highlight: 0 });
        assert_eq!(first.offsets["@a:x"], OffsetChange::Delta(2, 0));
    }

    #[test]
    fn leaving_overrides_what_came_before() {
        let mut n = Notifications::default();
        n.joined("@a:x", 1);
        n.differ("@a:x", 1, 0);
        n.left("@a:x");
        n.differ("@a:x", 1, 0);
        assert_eq!(n.offsets["@a:x"], OffsetChange::Left);
    }
}
