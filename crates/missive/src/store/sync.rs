//! Set-based reads for `/sync`: one query for many rooms instead of one per room.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::{
    AccountDataRow, Backend, DeviceSyncState, EVENT_COLUMN_COUNT, EVENT_COLUMNS, EVENT_COLUMNS_E, EventRow,
    MembershipRow, Params, ReceiptRow, Store, StoreError, StoreResult,
    e2ee::DEVICE_STATE_ARMS,
    event_row, sql,
    sync_memory::{ReadState, unread},
};

/// What changed in a range of stream positions.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Rooms with new events or receipts.
    pub rooms: HashMap<String, RoomChanges>,
    /// Whether any new event relates to another (edits, reactions, threads).
    pub relations: bool,
    /// Whether any membership changed in those rooms.
    pub memberships: bool,
    /// Users whose device list changed.
    pub device_lists: Vec<String>,
    /// Users among `device_lists` whose changes concern only themselves (user-signing key).
    pub self_only: HashSet<String>,
    /// The positions of the new events in `rooms`, when told from memory (see
    /// [`Store::recent_events`]); a read leaves it out.
    pub event_positions: Option<Vec<i64>>,
}

/// What changed in one room.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoomChanges {
    pub events: bool,
    pub state: bool,
    pub receipts: bool,
}

/// Room lists are read in chunks to stay under the backends' parameter limits.
const CHUNK: usize = 500;

/// What every sync of a device starts from (see [`Store::user_sync_state`]).
#[derive(Debug, Default)]
pub struct UserSyncState {
    pub memberships: Vec<MembershipRow>,
    pub account_data: Vec<AccountDataRow>,
    /// Notifications and highlights per room.
    pub notification_counts: HashMap<String, (i64, i64)>,
    pub device: DeviceSyncState,
}

impl Store {
    /// What changed at positions in `(since, to]` in the rooms `user_id` has a membership
    /// of, per room, and whose device lists changed, in one read.
    pub async fn changes_between(&self, since: i64, to: i64, user_id: &str) -> StoreResult<Changes> {
        let rows = sqlx::query(
            "SELECT room_id, CAST(0 AS BIGINT), \
             CAST(MAX(CASE WHEN state_key IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(MAX(CASE WHEN relates_to IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(MAX(CASE WHEN event_type = 'm.room.member' THEN 1 ELSE 0 END) AS BIGINT) \
             FROM events WHERE stream_pos > $1 AND stream_pos <= $2 \
             AND room_id IN (SELECT room_id FROM memberships WHERE user_id = $3) GROUP BY room_id \
             UNION ALL SELECT room_id, CAST(1 AS BIGINT), CAST(0 AS BIGINT), CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
             FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2 \
             AND room_id IN (SELECT room_id FROM memberships WHERE user_id = $3) GROUP BY room_id \
             UNION ALL SELECT user_id, CAST(2 AS BIGINT), CAST(MIN(self_only) AS BIGINT), CAST(0 AS BIGINT), \
             CAST(0 AS BIGINT) FROM device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2 GROUP BY user_id",
        )
        .bind(since)
        .bind(to)
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        let mut out = Changes::default();
        for r in rows {
            let kind: i64 = r.get(1);
            if kind == 2 {
                let user: String = r.get(0);
                if r.get::<i64, _>(2) == 1 {
                    out.self_only.insert(user.clone());
                }
                out.device_lists.push(user);
                continue;
            }
            let room = out.rooms.entry(r.get(0)).or_default();
            if kind == 1 {
                room.receipts = true;
            } else {
                room.events = true;
                room.state |= r.get::<i64, _>(2) == 1;
                out.relations |= r.get::<i64, _>(3) == 1;
                out.memberships |= r.get::<i64, _>(4) == 1;
            }
        }
        Ok(out)
    }

    /// The events at positions in `(since, to]` of the rooms `user_id` is joined to, at most
    /// `cap` of them (newest first): on an incremental sync, every new timeline event in one
    /// read, taken with the other first reads instead of after them.
    pub async fn new_events_of_member(
        &self,
        user_id: &str,
        since: i64,
        to: i64,
        cap: i64,
    ) -> StoreResult<Vec<EventRow>> {
        let rows = sqlx::query(sql(format!(
            "SELECT {EVENT_COLUMNS_E} FROM events e JOIN memberships m ON m.room_id = e.room_id \
             WHERE m.user_id = $1 AND m.membership = 'join' AND e.stream_pos > $2 AND e.stream_pos <= $3 \
             ORDER BY e.stream_pos DESC LIMIT $4"
        )))
        .bind(user_id)
        .bind(since)
        .bind(to)
        .bind(cap)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(event_row).collect())
    }

    /// Read receipts of many rooms changed in `(since, to]` (private ones only `viewer`'s).
    /// The upper bound keeps a receipt stored past the reader's position for the next read.
    pub async fn receipts_for_rooms(
        &self,
        rooms: &[String],
        since: Option<i64>,
        to: i64,
        viewer: &str,
    ) -> StoreResult<HashMap<String, Vec<ReceiptRow>>> {
        let mut out: HashMap<String, Vec<ReceiptRow>> = HashMap::new();
        for chunk in rooms.chunks(CHUNK) {
            let mut p = Params::new(self.backend);
            let text = format!(
                "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts FROM receipts \
                 WHERE stream_pos > {} AND stream_pos <= {} AND receipt_type IN ('m.read', 'm.read.private') \
                 AND (receipt_type = 'm.read' OR user_id = {}) AND room_id IN ({})",
                p.next(),
                p.next(),
                p.next(),
                p.list(chunk.len())
            );
            let mut query = sqlx::query(sql(text)).bind(since.unwrap_or(-1)).bind(to).bind(viewer);
            for room in chunk {
                query = query.bind(room);
            }
            for r in query.fetch_all(&self.read).await? {
                out.entry(r.get(0)).or_default().push(ReceiptRow {
                    user_id: r.get(1),
                    receipt_type: r.get(2),
                    thread_id: r.get(3),
                    event_id: r.get(4),
                    ts: r.get(5),
                });
            }
        }
        Ok(out)
    }

    /// The opening of an aggregate that returns a query's rows as one JSON array of arrays
    /// (closed by `))` after the columns): reads that return many rows on every sync use
    /// it, since each row handed over by the database driver's thread costs a wake-up of
    /// the reader.
    fn json_rows(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "json_group_array(json_array(",
            Backend::Postgres => "json_agg(json_build_array(",
        }
    }

    /// What every sync of a device starts from, in one read: the user's memberships, their
    /// account data changed after `since`, their notification counts per room, and the
    /// device's key counts and to-device queue (see `DEVICE_STATE_ARMS`).
    pub async fn user_sync_state(
        &self,
        user_id: &str,
        device_id: &str,
        since: Option<i64>,
    ) -> StoreResult<UserSyncState> {
        self.user_sync_state_of(user_id, device_id, since, true).await
    }

    /// [`Store::user_sync_state`], with or without the memberships and the counts (`rooms`;
    /// sliding sync reads its memberships with their rooms' facts, and counts only for the
    /// rooms it sends). Served from memory when all of it is kept there (see
    /// `sync_memory.rs`): the usual case for a sync woken by a message.
    pub async fn user_sync_state_of(
        &self,
        user_id: &str,
        device_id: &str,
        since: Option<i64>,
        rooms: bool,
    ) -> StoreResult<UserSyncState> {
        if let Some(state) = self.sync_memory.state(user_id, device_id, since, rooms) {
            return Ok(state);
        }
        let mark = self.sync_memory.mark();
        let (out, read) = self.read_user_sync_state(user_id, device_id, since, rooms).await?;
        self.sync_memory.keep(mark, user_id, device_id, read);
        Ok(out)
    }

    /// Reads what [`Self::user_sync_state_of`] returns, with what memory may keep of it.
    async fn read_user_sync_state(
        &self,
        user_id: &str,
        device_id: &str,
        since: Option<i64>,
        rooms: bool,
    ) -> StoreResult<(UserSyncState, ReadState)> {
        let rooms_arms = if rooms {
            // Sums and offsets apart, so that memory can keep each and move the sums.
            " UNION ALL SELECT CAST(0 AS BIGINT), room_id, membership, event_id, stream_pos, CAST(0 AS BIGINT) \
             FROM memberships WHERE user_id = $1 AND forgotten = 0 \
             UNION ALL SELECT CAST(2 AS BIGINT), r.room_id, NULL, NULL, r.notify_seq, r.highlight_seq \
             FROM notification_offsets o JOIN rooms r ON r.room_id = o.room_id WHERE o.user_id = $1 \
             UNION ALL SELECT CAST(7 AS BIGINT), room_id, NULL, NULL, notify_off, highlight_off \
             FROM notification_offsets WHERE user_id = $1"
        } else {
            ""
        };
        // Every sync reads this: the rows come as one JSON array.
        let array = self.json_rows();
        let text = format!(
            "SELECT CAST(COALESCE({array}k, a, b, c, d, e)), '[]') AS TEXT) FROM (\
             SELECT CAST(1 AS BIGINT) AS k, room_id AS a, data_type AS b, content AS c, CAST(0 AS BIGINT) AS d, \
             CAST(0 AS BIGINT) AS e FROM account_data WHERE user_id = $1 AND stream_pos > $3 \
             UNION ALL SELECT CAST(6 AS BIGINT), '', NULL, NULL, CAST(COALESCE(MAX(stream_pos), -1) AS BIGINT), \
             CAST(0 AS BIGINT) FROM account_data WHERE user_id = $1\
             {rooms_arms} UNION ALL {DEVICE_STATE_ARMS}) u"
        );
        let json: String = sqlx::query_scalar(sql(text))
            .bind(user_id)
            .bind(device_id)
            .bind(since.unwrap_or(-1))
            .fetch_one(&self.read)
            .await?;
        type Row = (i64, String, Option<String>, Option<String>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut out = UserSyncState::default();
        let mut read = ReadState::default();
        let mut memberships = Vec::new();
        let mut offsets = Vec::new();
        for (kind, a, b, c, d, e) in rows {
            let (d, e) = (d.unwrap_or_default(), e.unwrap_or_default());
            match kind {
                0 => memberships.push(MembershipRow {
                    room_id: a,
                    user_id: user_id.to_owned(),
                    membership: b.unwrap_or_default(),
                    event_id: c.unwrap_or_default(),
                    stream_pos: d,
                }),
                1 => out.account_data.push(AccountDataRow {
                    room_id: a,
                    data_type: b.unwrap_or_default(),
                    content: c.unwrap_or_default(),
                }),
                2 => read.sums.push((a, d, e)),
                6 => read.account_data_pos = d,
                7 => offsets.push((a, d, e)),
                _ => out.device.add(kind, a, d),
            }
        }
        out.device.unused_fallbacks.sort();
        if rooms {
            let sums: HashMap<&str, (i64, i64)> = read.sums.iter().map(|(r, n, h)| (r.as_str(), (*n, *h))).collect();
            for (room, notify_off, highlight_off) in &offsets {
                if let Some(sums) = sums.get(room.as_str()) {
                    out.notification_counts.insert(room.clone(), unread(*sums, (*notify_off, *highlight_off)));
                }
            }
            out.memberships = memberships.clone();
            read.memberships = Some(memberships);
            read.offsets = Some(offsets);
        }
        read.device = out.device.clone();
        Ok((out, read))
    }

    /// The heroes of one room for `user_id` (see [`Self::summaries`]), whatever its name.
    pub async fn heroes(&self, room_id: &str, user_id: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT user_id FROM memberships WHERE room_id = $1 AND user_id <> $2 \
             AND membership IN ('join', 'invite') ORDER BY stream_pos LIMIT 5",
        )
        .bind(room_id)
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Joined and invited member counts, and up to five heroes other than `user_id`, per room.
    pub async fn summaries(
        &self,
        rooms: &[String],
        user_id: &str,
    ) -> StoreResult<HashMap<String, ((i64, i64), Vec<String>)>> {
        let mut out: HashMap<String, ((i64, i64), Vec<String>)> = HashMap::new();
        for chunk in rooms.chunks(CHUNK) {
            let text = format!(
                "SELECT room_id, CAST(SUM(CASE WHEN membership = 'join' THEN 1 ELSE 0 END) AS BIGINT), \
                 CAST(SUM(CASE WHEN membership = 'invite' THEN 1 ELSE 0 END) AS BIGINT) \
                 FROM memberships WHERE room_id IN ({}) GROUP BY room_id",
                Params::new(self.backend).list(chunk.len())
            );
            let mut query = sqlx::query(sql(text));
            for room in chunk {
                query = query.bind(room);
            }
            for r in query.fetch_all(&self.read).await? {
                out.entry(r.get(0)).or_default().0 = (r.get(1), r.get(2));
            }
            let mut p = Params::new(self.backend);
            let text = format!(
                "SELECT room_id, user_id FROM (SELECT room_id, user_id, \
                 ROW_NUMBER() OVER (PARTITION BY room_id ORDER BY stream_pos) AS rn FROM memberships \
                 WHERE user_id <> {} AND membership IN ('join', 'invite') AND room_id IN ({}) \
                 AND NOT EXISTS (SELECT 1 FROM room_current_state s WHERE s.room_id = memberships.room_id \
                 AND s.state_key = '' AND s.event_type IN ('m.room.name', 'm.room.canonical_alias'))) ranked \
                 WHERE rn <= 5 ORDER BY room_id, rn",
                p.next(),
                p.list(chunk.len())
            );
            let mut query = sqlx::query(sql(text)).bind(user_id);
            for room in chunk {
                query = query.bind(room);
            }
            for r in query.fetch_all(&self.read).await? {
                out.entry(r.get(0)).or_default().1.push(r.get(1));
            }
        }
        Ok(out)
    }

    /// The last `limit` events of each room with `from < stream_pos <= to` (per room),
    /// newest first within each room: one indexed range scan per room, in one statement.
    pub async fn recent_events_of_rooms(&self, rooms: &[(String, i64, i64)], limit: i64) -> StoreResult<Vec<EventRow>> {
        let mut out = Vec::new();
        // SQLite allows at most 500 terms in a compound SELECT.
        for chunk in rooms.chunks(100) {
            let mut p = Params::new(self.backend);
            let parts: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events WHERE room_id = {} AND stream_pos > {} \
                         AND stream_pos <= {} ORDER BY stream_pos DESC LIMIT {}) AS r{i}",
                        p.next(),
                        p.next(),
                        p.next(),
                        p.next()
                    )
                })
                .collect();
            let mut query = sqlx::query(sql(parts.join(" UNION ALL ")));
            for (room, from, to) in chunk {
                query = query.bind(room).bind(*from).bind(*to).bind(limit);
            }
            out.extend(query.fetch_all(&self.read).await?.into_iter().map(event_row));
        }
        Ok(out)
    }

    /// The current state group of each of many rooms.
    pub async fn current_groups_of_rooms(&self, rooms: &[String]) -> StoreResult<HashMap<String, i64>> {
        let mut out = HashMap::with_capacity(rooms.len());
        for chunk in rooms.chunks(CHUNK) {
            let text = format!(
                "SELECT room_id, state_group FROM rooms WHERE room_id IN ({})",
                Params::new(self.backend).list(chunk.len())
            );
            let mut query = sqlx::query(sql(text));
            for room in chunk {
                query = query.bind(room);
            }
            out.extend(query.fetch_all(&self.read).await?.into_iter().map(|r| (r.get(0), r.get(1))));
        }
        Ok(out)
    }

    /// A user's membership in a room as of stream position `at`, with the position of the
    /// member event that set it.
    pub async fn own_member_event_at(
        &self,
        room_id: &str,
        user_id: &str,
        at: i64,
    ) -> StoreResult<Option<(String, i64)>> {
        let row = sqlx::query(
            "SELECT stream_pos, json FROM events WHERE room_id = $1 AND event_type = 'm.room.member' \
             AND state_key = $2 AND stream_pos <= $3 ORDER BY stream_pos DESC LIMIT 1",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(at)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.and_then(|r| {
            let json: String = r.get(1);
            let event: serde_json::Value = serde_json::from_str(&json).ok()?;
            Some((event["content"]["membership"].as_str()?.to_owned(), r.get(0)))
        }))
    }

    /// Where the user joined the room, if they were joined at `at` and stayed joined (only
    /// profile changes since): the position of their member event current at `at`.
    pub async fn joined_throughout(&self, room_id: &str, user_id: &str, at: i64) -> StoreResult<Option<i64>> {
        let rows = sqlx::query(
            "SELECT stream_pos, json FROM events WHERE room_id = $1 AND event_type = 'm.room.member' \
             AND state_key = $2 AND stream_pos >= COALESCE((SELECT MAX(stream_pos) FROM events \
             WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key = $2 AND stream_pos <= $3), $3 + 1) \
             ORDER BY stream_pos",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(at)
        .fetch_all(&self.read)
        .await?;
        let first = rows.first().map(|r| r.get::<i64, _>(0)).filter(|pos| *pos <= at);
        let all_joins = rows.iter().all(|r| {
            let json: String = r.get(1);
            serde_json::from_str::<serde_json::Value>(&json)
                .is_ok_and(|event| event["content"]["membership"].as_str() == Some("join"))
        });
        Ok(first.filter(|_| all_joins))
    }

    /// Which of the given events are part of their room's current state.
    pub async fn current_state_ids_among(&self, rows: &[EventRow]) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::new();
        for chunk in rows.chunks(CHUNK) {
            let text = format!(
                "SELECT event_id FROM room_current_state WHERE event_id IN ({})",
                Params::new(self.backend).list(chunk.len())
            );
            let mut query = sqlx::query_scalar::<_, String>(sql(text));
            for row in chunk {
                query = query.bind(&row.event_id);
            }
            out.extend(query.fetch_all(&self.read).await?);
        }
        Ok(out)
    }

    /// The current member events of `(room, user)` pairs (none for a pair without one),
    /// from those kept in memory where they are (see `recent.rs`), read otherwise.
    pub async fn current_members(&self, pairs: &[(String, String)]) -> StoreResult<Vec<EventRow>> {
        let mark = self.recent.member_mark();
        let (mut out, missing) = self.recent.members(pairs);
        let mut read = Vec::new();
        for chunk in missing.chunks(CHUNK / 2) {
            let mut p = Params::new(self.backend);
            let terms: Vec<String> =
                chunk.iter().map(|_| format!("(s.room_id = {} AND s.state_key = {})", p.next(), p.next())).collect();
            let text = format!(
                "SELECT {EVENT_COLUMNS_E}, s.state_key FROM room_current_state s JOIN events e ON e.event_id = s.event_id \
                 WHERE s.event_type = 'm.room.member' AND ({})",
                terms.join(" OR ")
            );
            let mut query = sqlx::query(sql(text));
            for (room, user) in chunk {
                query = query.bind(room).bind(user);
            }
            for r in query.fetch_all(&self.read).await? {
                let user: String = r.get(EVENT_COLUMN_COUNT);
                read.push((user, event_row(r)));
            }
        }
        self.recent.remember_members(&read, mark);
        out.extend(read.into_iter().map(|(_, row)| row));
        Ok(out)
    }

    /// The current state events of many rooms whose event was stored after `since` (all of
    /// them for `None`).
    pub async fn current_state_of_rooms(&self, rooms: &[String], since: Option<i64>) -> StoreResult<Vec<EventRow>> {
        let mut out = Vec::new();
        for chunk in rooms.chunks(CHUNK) {
            let mut p = Params::new(self.backend);
            let text = format!(
                "SELECT {EVENT_COLUMNS_E} FROM room_current_state s JOIN events e ON e.event_id = s.event_id \
                 WHERE e.stream_pos > {} AND s.room_id IN ({})",
                p.next(),
                p.list(chunk.len())
            );
            let mut query = sqlx::query(sql(text)).bind(since.unwrap_or(-1));
            for room in chunk {
                query = query.bind(room);
            }
            out.extend(query.fetch_all(&self.read).await?.into_iter().map(event_row));
        }
        Ok(out)
    }

    /// A user's notification and highlight counts in the given rooms.
    pub async fn notification_counts_of(
        &self,
        user_id: &str,
        rooms: &[String],
    ) -> StoreResult<HashMap<String, (i64, i64)>> {
        let mut out = HashMap::new();
        for chunk in rooms.chunks(CHUNK) {
            let mut p = Params::new(self.backend);
            let text = format!(
                "SELECT o.room_id, CAST(r.notify_seq - o.notify_off AS BIGINT), CAST(r.highlight_seq - o.highlight_off AS BIGINT) \
                 FROM notification_offsets o JOIN rooms r ON r.room_id = o.room_id WHERE o.user_id = {} AND o.room_id IN ({})",
                p.next(),
                p.list(chunk.len())
            );
            let mut query = sqlx::query(sql(text)).bind(user_id);
            for room in chunk {
                query = query.bind(room);
            }
            for r in query.fetch_all(&self.read).await? {
                out.insert(r.get(0), (r.get::<i64, _>(1).max(0), r.get::<i64, _>(2).max(0)));
            }
        }
        Ok(out)
    }

    /// A user's memberships (but forgotten rooms) with what sliding sync sorts and filters
    /// their rooms by, in one read; a room this server does not hold (an invite from
    /// another server) has no facts.
    pub async fn sliding_memberships(&self, user_id: &str) -> StoreResult<Vec<(MembershipRow, RoomFacts)>> {
        // A user in a thousand rooms: the rows come as one JSON array.
        let array = self.json_rows();
        let text = format!(
            "SELECT CAST(COALESCE({array}m.room_id, m.membership, m.event_id, m.stream_pos, r.bump_pos, \
             COALESCE(r.encrypted, 0), r.room_type)), '[]') AS TEXT) \
             FROM memberships m LEFT JOIN rooms r ON r.room_id = m.room_id \
             WHERE m.user_id = $1 AND m.forgotten = 0"
        );
        let json: String = sqlx::query_scalar(sql(text)).bind(user_id).fetch_one(&self.read).await?;
        type Row = (String, String, String, i64, Option<i64>, i64, Option<String>);
        let rows: Vec<Row> = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(rows
            .into_iter()
            .map(|(room_id, membership, event_id, stream_pos, bump_pos, encrypted, room_type)| {
                let facts = RoomFacts { bump_pos, encrypted: encrypted > 0, room_type };
                let membership =
                    MembershipRow { room_id, user_id: user_id.to_owned(), membership, event_id, stream_pos };
                (membership, facts)
            })
            .collect())
    }

    /// What sliding sync sorts and filters rooms by, as kept at write time (migration
    /// 0025): the latest bump event's position, whether the room is encrypted, its type;
    /// by room ID.
    pub async fn sliding_room_facts(&self, rooms: &[String]) -> StoreResult<Vec<(String, RoomFacts)>> {
        let mut out = Vec::with_capacity(rooms.len());
        for chunk in rooms.chunks(CHUNK) {
            let mut p = Params::new(self.backend);
            let text = format!(
                "SELECT room_id, bump_pos, encrypted, room_type FROM rooms WHERE room_id IN ({})",
                p.list(chunk.len())
            );
            let mut query = sqlx::query(sql(text));
            for room in chunk {
                query = query.bind(room);
            }
            out.extend(query.fetch_all(&self.read).await?.into_iter().map(|r| {
                (r.get(0), RoomFacts { bump_pos: r.get(1), encrypted: r.get::<i64, _>(2) > 0, room_type: r.get(3) })
            }));
        }
        Ok(out)
    }

    /// The current state events of the given types in many rooms.
    pub async fn current_state_of_types(&self, rooms: &[String], types: &[String]) -> StoreResult<Vec<EventRow>> {
        let mut out = Vec::new();
        if types.is_empty() {
            return Ok(out);
        }
        for chunk in rooms.chunks(CHUNK) {
            let mut p = Params::new(self.backend);
            let text = format!(
                "SELECT {EVENT_COLUMNS_E} FROM room_current_state s JOIN events e ON e.event_id = s.event_id \
                 WHERE s.room_id IN ({}) AND s.event_type IN ({})",
                p.list(chunk.len()),
                p.list(types.len())
            );
            let mut query = sqlx::query(sql(text));
            for room in chunk {
                query = query.bind(room);
            }
            for kind in types {
                query = query.bind(kind);
            }
            out.extend(query.fetch_all(&self.read).await?.into_iter().map(event_row));
        }
        Ok(out)
    }
}

/// What sliding sync sorts and filters a room by, kept at write time (see
/// [`Store::sliding_room_facts`]).
#[derive(Debug, Clone, Default)]
pub struct RoomFacts {
    pub bump_pos: Option<i64>,
    pub encrypted: bool,
    /// The type its create event gives the room (a space).
    pub room_type: Option<String>,
}
