//! The deletions of the retention purge, in batches: each statement is short, so that
//! sends and syncs never wait long behind it, and a purge cut short resumes where it was
//! (a deleted row stays deleted; the next run takes the rest).

use super::StoreResult;

impl super::Store {
    /// Runs a statement taking `$1` (the cutoff) and `$2` (the batch size) until a run
    /// changes fewer rows than a batch; answers how many rows changed in all.
    async fn in_batches(&self, statement: &'static str, cutoff: i64, batch: i64) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(statement).bind(cutoff).bind(batch).execute(&self.write).await?.rows_affected();
            total += done;
            if done < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Erases the IP address and user agent of devices last seen before `cutoff` (but
    /// those of users under a legal hold); answers how many devices.
    pub async fn erase_connection_data(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        self.in_batches(
            "UPDATE devices SET last_seen_ip = NULL, last_seen_user_agent = NULL \
             WHERE (user_id, device_id) IN (SELECT user_id, device_id FROM devices \
                 WHERE last_seen_ts < $1 AND (last_seen_ip IS NOT NULL OR last_seen_user_agent IS NOT NULL) \
                 AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = devices.user_id) \
                 LIMIT $2)",
            cutoff,
            batch,
        )
        .await
    }

    /// Deletes audit entries older than `cutoff`; answers how many.
    pub async fn delete_old_audit(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        self.in_batches(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE ts < $1 ORDER BY id LIMIT $2)",
            cutoff,
            batch,
        )
        .await
    }
}

/// A legal hold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LegalHold {
    pub id: i64,
    pub user_id: Option<String>,
    pub room_id: Option<String>,
    pub reason: String,
    pub reference: String,
    pub placed_by: String,
    pub placed_ts: i64,
    pub lifted_by: Option<String>,
    pub lifted_ts: Option<i64>,
}

impl super::Store {
    /// Places a hold on a user's or a room's data; answers its ID.
    pub async fn place_hold(
        &self,
        user_id: Option<&str>,
        room_id: Option<&str>,
        reason: &str,
        reference: &str,
        by: &str,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO legal_holds (user_id, room_id, reason, reference, placed_by, placed_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(reason)
        .bind(reference)
        .bind(by)
        .bind(super::now_ms())
        .fetch_one(&self.write)
        .await?)
    }

    /// Lifts a hold (its record stays); answers whether an active hold was lifted.
    pub async fn lift_hold(&self, id: i64, by: &str) -> StoreResult<bool> {
        Ok(sqlx::query("UPDATE legal_holds SET lifted_by = $2, lifted_ts = $3 WHERE id = $1 AND lifted_ts IS NULL")
            .bind(id)
            .bind(by)
            .bind(super::now_ms())
            .execute(&self.write)
            .await?
            .rows_affected()
            > 0)
    }

    /// Every hold, active and lifted, newest first.
    pub async fn legal_holds(&self) -> StoreResult<Vec<LegalHold>> {
        let rows = sqlx::query(
            "SELECT id, user_id, room_id, reason, reference, placed_by, placed_ts, lifted_by, lifted_ts \
             FROM legal_holds ORDER BY id DESC",
        )
        .fetch_all(&self.read)
        .await?;
        use sqlx::Row;
        Ok(rows
            .into_iter()
            .map(|r| LegalHold {
                id: r.get(0),
                user_id: r.get(1),
                room_id: r.get(2),
                reason: r.get(3),
                reference: r.get(4),
                placed_by: r.get(5),
                placed_ts: r.get(6),
                lifted_by: r.get(7),
                lifted_ts: r.get(8),
            })
            .collect())
    }

    /// Media uploaded before `cutoff` by users under no active hold: deleted with their
    /// thumbnails, in batches; answers the content hashes no row uses any more (their
    /// files may go) and how many items went.
    pub async fn purge_old_media(&self, cutoff: i64, batch: i64) -> StoreResult<(Vec<String>, u64)> {
        let mut unused = Vec::new();
        let mut items = 0;
        loop {
            let ids: Vec<(String, String)> = sqlx::query_as(
                "SELECT origin, media_id FROM media m WHERE created_ts < $1 \
                 AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = m.uploader) \
                 LIMIT $2",
            )
            .bind(cutoff)
            .bind(batch)
            .fetch_all(&self.read)
            .await?;
            for (origin, media_id) in &ids {
                if let Some(hashes) = self.delete_media(origin, media_id).await? {
                    unused.extend(hashes);
                    items += 1;
                }
            }
            if (ids.len() as i64) < batch {
                return Ok((unused, items));
            }
        }
    }
}

/// A login or a session's end.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionLogRow {
    pub device_id: String,
    /// `login` or `logout`.
    pub event: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub ts: i64,
}

impl super::Store {
    /// Records a login or a session's end.
    pub async fn log_session(
        &self,
        user_id: &str,
        device_id: &str,
        event: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO session_log (user_id, device_id, event, ip, user_agent, ts) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(event)
        .bind(ip)
        .bind(user_agent)
        .bind(super::now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A user's logins and session ends, oldest first.
    pub async fn session_log_of(&self, user_id: &str) -> StoreResult<Vec<SessionLogRow>> {
        use sqlx::Row;
        let rows =
            sqlx::query("SELECT device_id, event, ip, user_agent, ts FROM session_log WHERE user_id = $1 ORDER BY id")
                .bind(user_id)
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| SessionLogRow {
                device_id: r.get(0),
                event: r.get(1),
                ip: r.get(2),
                user_agent: r.get(3),
                ts: r.get(4),
            })
            .collect())
    }

    /// Deletes session log rows older than `cutoff` (but those of users under a hold).
    pub async fn delete_old_session_log(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        self.in_batches(
            "DELETE FROM session_log WHERE id IN (SELECT id FROM session_log s WHERE ts < $1 \
             AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = s.user_id) \
             ORDER BY id LIMIT $2)",
            cutoff,
            batch,
        )
        .await
    }
}

/// A room the history purge looks at: its version and its own `m.room.retention` event.
#[derive(Debug, Clone)]
pub struct PurgeRoom {
    pub room_id: String,
    pub room_version: String,
    /// The JSON of the room's current `m.room.retention` event, if it has one.
    pub retention_event: Option<String>,
}

/// An event the history purge considers, in stream order.
#[derive(Debug, Clone)]
pub struct PurgeCandidate {
    pub stream_pos: i64,
    pub event_id: String,
    pub sender: String,
    pub is_state: bool,
    /// The earlier of its origin's timestamp and its arrival here: a server that claims a
    /// future time cannot keep its events past the retention.
    pub ts: i64,
    /// Part of the room's current state: in force, never purged.
    pub current_state: bool,
    /// A leaf of the room's graph: the next event builds on it, so it is emptied, not deleted.
    pub extremity: bool,
    pub json: String,
    pub redacted: bool,
}

/// An event the purge empties but keeps for the room's graph.
#[derive(Debug, Clone)]
pub struct PurgeStub {
    pub stream_pos: i64,
    /// Its place outside the timeline (an outlier's, below zero).
    pub new_pos: i64,
    /// Its JSON pruned as a redaction would.
    pub json: String,
}

impl super::Store {
    /// Rooms whose history the purge may reach (all, or `only` that one): all but those
    /// under an active legal hold.
    pub async fn rooms_for_purge(&self, only: Option<&str>) -> StoreResult<Vec<PurgeRoom>> {
        use sqlx::Row;
        let text = format!(
            "SELECT r.room_id, r.room_version, e.json FROM rooms r \
             LEFT JOIN room_current_state s ON s.room_id = r.room_id AND s.event_type = 'm.room.retention' \
                 AND s.state_key = '' \
             LEFT JOIN events e ON e.event_id = s.event_id \
             WHERE NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.room_id = r.room_id) {} \
             ORDER BY r.room_id",
            if only.is_some() { "AND r.room_id = $1" } else { "" }
        );
        let mut query = sqlx::query(super::sql(text));
        if let Some(room_id) = only {
            query = query.bind(room_id);
        }
        let rows = query.fetch_all(&self.read).await?;
        Ok(rows
            .into_iter()
            .map(|r| PurgeRoom { room_id: r.get(0), room_version: r.get(1), retention_event: r.get(2) })
            .collect())
    }

    /// Users under an active legal hold.
    pub async fn held_users(&self) -> StoreResult<std::collections::HashSet<String>> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM legal_holds WHERE lifted_ts IS NULL AND user_id IS NOT NULL",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(users.into_iter().collect())
    }

    /// The next `limit` events of a room after `after`, in stream order, that the purge has
    /// not emptied yet.
    pub async fn purge_candidates(&self, room_id: &str, after: i64, limit: i64) -> StoreResult<Vec<PurgeCandidate>> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT e.stream_pos, e.event_id, e.sender, \
                 CAST(CASE WHEN e.state_key IS NULL THEN 0 ELSE 1 END AS BIGINT), \
                 CASE WHEN e.origin_server_ts < e.received_ts THEN e.origin_server_ts ELSE e.received_ts END, \
                 CAST(CASE WHEN EXISTS (SELECT 1 FROM room_current_state s WHERE s.event_id = e.event_id) \
                     THEN 1 ELSE 0 END AS BIGINT), \
                 CAST(CASE WHEN EXISTS (SELECT 1 FROM room_extremities x WHERE x.room_id = e.room_id \
                     AND x.event_id = e.event_id) THEN 1 ELSE 0 END AS BIGINT), \
                 e.json, CAST(CASE WHEN e.redacted_by IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM events e WHERE e.room_id = $1 AND e.stream_pos > $2 AND e.purged = 0 \
             ORDER BY e.stream_pos LIMIT $3",
        )
        .bind(room_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PurgeCandidate {
                stream_pos: r.get(0),
                event_id: r.get(1),
                sender: r.get(2),
                is_state: r.get::<i64, _>(3) != 0,
                ts: r.get(4),
                current_state: r.get::<i64, _>(5) != 0,
                extremity: r.get::<i64, _>(6) != 0,
                json: r.get(7),
                redacted: r.get::<i64, _>(8) != 0,
            })
            .collect())
    }

    /// Purges events of a room in one transaction: `deleted` go, `stubs` are emptied and
    /// leave the timeline. Whatever a member had not read of them stops counting as unread
    /// (as if read: what cannot be shown cannot be pending), their notifications, relations,
    /// queued sends and expiries go with them.
    pub async fn purge_room_events(&self, room_id: &str, deleted: &[i64], stubs: &[PurgeStub]) -> StoreResult<()> {
        // It moves the offsets of the room's members.
        let _forget = self.sync_memory.forget_all();
        if deleted.is_empty() && stubs.is_empty() {
            return Ok(());
        }
        // Positions are integers formatted here, never user input.
        let positions: Vec<i64> = deleted.iter().chain(stubs.iter().map(|s| &s.stream_pos)).copied().collect();
        self.recent.forget_positions(&positions);
        let positions: Vec<String> = positions.iter().map(i64::to_string).collect();
        let positions = positions.join(",");
        let mut tx = self.write.begin().await?;
        // The members' rows are locked first, so that a read receipt committing meanwhile
        // is either wholly before (and seen below) or waits for this purge (and finds the
        // events gone): the events are never both covered by it and counted here.
        sqlx::query("UPDATE notification_offsets SET notify_off = notify_off WHERE room_id = $1")
            .bind(room_id)
            .execute(&mut *tx)
            .await?;
        // Each member's notifications among these events that no read receipt of theirs
        // covers: taken off their count, as a receipt would.
        let unread: Vec<(String, i64, i64)> = sqlx::query_as(super::sql(format!(
            "SELECT user_id, CAST(SUM(CASE WHEN lvl >= 1 THEN 1 ELSE 0 END) AS BIGINT), \
                 CAST(SUM(CASE WHEN lvl >= 2 THEN 1 ELSE 0 END) AS BIGINT) FROM ( \
             SELECT o.user_id, COALESCE(x.level, CASE WHEN e.sender = o.user_id THEN 0 ELSE e.notify END) AS lvl \
             FROM notification_offsets o \
             JOIN events e ON e.room_id = o.room_id AND e.stream_pos IN ({positions}) AND e.stream_pos > o.since_pos \
             LEFT JOIN push_exceptions x ON x.user_id = o.user_id AND x.room_id = e.room_id AND x.event_pos = e.stream_pos \
             WHERE o.room_id = $1 AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.room_id = e.room_id \
                 AND r.user_id = o.user_id AND r.receipt_type IN ('m.read', 'm.read.private') \
                 AND r.event_pos >= e.stream_pos \
                 AND (r.thread_id = '' OR r.thread_id = COALESCE(e.thread_root, 'main')))) t \
             WHERE lvl >= 1 GROUP BY user_id"
        )))
        .bind(room_id)
        .fetch_all(&mut *tx)
        .await?;
        // One statement for every member whose count moves: `VALUES` columns are named
        // `column1`… on both backends.
        for chunk in unread.chunks(500) {
            let mut p = super::Params::new(self.backend);
            let values = p.rows(chunk.len(), 3);
            let room = p.next();
            let text = format!(
                "UPDATE notification_offsets SET notify_off = notify_off + v.column2, \
                 highlight_off = highlight_off + v.column3 FROM (VALUES {values}) AS v \
                 WHERE notification_offsets.room_id = {room} AND notification_offsets.user_id = v.column1"
            );
            let mut query = sqlx::query(super::sql(text));
            for (user, notify, highlight) in chunk {
                query = query.bind(user).bind(notify).bind(highlight);
            }
            query.bind(room_id).execute(&mut *tx).await?;
        }
        sqlx::query(super::sql(format!(
            "DELETE FROM push_exceptions WHERE room_id = $1 \
             AND user_id IN (SELECT user_id FROM memberships WHERE room_id = $1) AND event_pos IN ({positions})"
        )))
        .bind(room_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(super::sql(format!(
            "DELETE FROM event_expiry WHERE event_id IN (SELECT event_id FROM events WHERE stream_pos IN ({positions}))"
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(super::sql(format!("DELETE FROM federation_outbox WHERE stream_pos IN ({positions})")))
            .execute(&mut *tx)
            .await?;
        if !deleted.is_empty() {
            let deleted: Vec<String> = deleted.iter().map(i64::to_string).collect();
            sqlx::query(super::sql(format!("DELETE FROM events WHERE stream_pos IN ({})", deleted.join(","))))
                .execute(&mut *tx)
                .await?;
        }
        for stub in stubs {
            sqlx::query(
                "UPDATE events SET stream_pos = $1, json = $2, outlier = 1, purged = 1, notify = 0, rel_type = NULL, \
                 relates_to = NULL, thread_root = NULL, txn_device_id = NULL, txn_id = NULL WHERE stream_pos = $3",
            )
            .bind(stub.new_pos)
            .bind(&stub.json)
            .bind(stub.stream_pos)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.recent.forget_members(Some(room_id));
        Ok(())
    }
}

impl super::Store {
    /// The next `limit` messages of `sender` after `after` whose content is still there,
    /// with their room's version: `(stream position, event ID, room version, JSON)`.
    pub async fn messages_to_erase(
        &self,
        sender: &str,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT e.stream_pos, e.event_id, r.room_version, e.json FROM events e JOIN rooms r ON r.room_id = e.room_id \
             WHERE e.sender = $1 AND e.state_key IS NULL AND e.redacted_by IS NULL AND e.purged = 0 \
             AND e.stream_pos > $2 ORDER BY e.stream_pos LIMIT $3",
        )
        .bind(sender)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// Replaces the JSON of events by their pruned form (`(event ID, JSON)`), in one
    /// transaction: their content, relations and expiries go.
    pub async fn erase_events_content(&self, pruned: &[(String, String)]) -> StoreResult<()> {
        self.recent.forget_events(&pruned.iter().map(|(id, _)| id.as_str()).collect());
        let mut tx = self.write.begin().await?;
        for (event_id, json) in pruned {
            super::expiry::prune_in_place(&mut tx, event_id, Some(json)).await?;
        }
        tx.commit().await?;
        self.recent.forget_members(None);
        Ok(())
    }
}
