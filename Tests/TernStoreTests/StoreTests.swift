import Foundation
import GRDB
import Testing
@testable import TernStore

func temporaryDatabase() -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-test-\(UUID().uuidString)")
    return dir.appendingPathComponent("tern.sqlite").path
}

/// A message, its recipients and its `received` event as schemas before 10
/// hold them (Store.insert writes today's columns).
func insertAsOldSchemasDo(_ queueID: String, recipients: Int, _ db: Database) throws {
    try db.execute(sql: "INSERT INTO message (queue_id, received_at, mail_from, size, body, header_message_id, origin) VALUES (?, 1, 'a@b.test', 3, X'616263', 'm@x', 'smtp')",
                   arguments: [queueID])
    let id = db.lastInsertedRowID
    for i in 0..<recipients {
        try db.execute(sql: "INSERT INTO recipient (message_id, address, domain, state, next_attempt_at, created_at) VALUES (?, ?, 'b.test', 'queued', 1, 1)",
                       arguments: [id, "r\(i)@b.test"])
    }
    try db.execute(sql: "INSERT INTO event (at, kind, message_id) VALUES (1, 'received', ?)", arguments: [id])
}

func sampleMessage(_ queueID: String = UUID().uuidString, recipients: Int = 2, size: Int = 100) -> NewMessage {
    NewMessage(queueID: queueID, receivedAt: 1_000, mailFrom: "a@x.test", body: Data(repeating: 65, count: size),
               clientAddress: "127.0.0.1", helo: "c.test", headerMessageID: "m@x", envID: "env", ret: "HDRS",
               bodyType: "8BITMIME", smtputf8: false, origin: "smtp",
               recipients: (0..<recipients).map { NewRecipient(address: "r\($0)@local.test", domain: "local.test", notify: "NEVER", orcpt: "rfc822;o@x") })
}

@Suite struct MigrationTests {
    /// The binary's embedded copies are the migration files, byte for byte.
    @Test func embeddedMigrationsEqualTheFiles() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let dir = root.appendingPathComponent("migrations")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".sql") }.sorted()
        #expect(files.count == Migrator.embedded.count, "run tools/gen-migrations")
        for (file, embedded) in zip(files, Migrator.embedded.sorted(by: { $0.version < $1.version })) {
            let text = try String(contentsOf: dir.appendingPathComponent(file), encoding: .utf8)
            #expect(file == embedded.name + ".sql")
            #expect(Int(file.prefix(while: \.isNumber)) == embedded.version)
            #expect(text == embedded.sql + "\n", "\(file) differs from the embedded copy: run tools/gen-migrations")
        }
    }

    @Test func appliesOnceAndRecords() throws {
        let path = temporaryDatabase()
        let store = try Store(path: path)
        #expect(try store.schemaVersion() == Migrator.knownVersion)
        let tables = try store.read { db in try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name") }
        for t in ["attempt", "event", "message", "recipient", "schema_migration"] { #expect(tables.contains(t)) }
        let indexes = try store.read { db in try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type='index'") }
        #expect(indexes.contains("recipient_claim"))
        // A new database starts with no free pages, though migration 7 drops indexes.
        #expect(try store.read { db in try Int.fetchOne(db, sql: "PRAGMA freelist_count") } == 0)
        store.close()
        let again = try Store(path: path) // reopening applies nothing new
        #expect(try again.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM schema_migration") } == Migrator.embedded.count)
        again.close()
    }

    @Test func refusesANewerSchema() throws {
        let path = temporaryDatabase()
        let store = try Store(path: path)
        _ = try store.writeDirect { db in
            try db.execute(sql: "INSERT INTO schema_migration VALUES (999, '0999_future', 0)")
        }
        store.close()
        #expect(throws: StoreError.schemaTooNew(found: 999, known: Migrator.knownVersion)) { try Store(path: path) }
        var readOnly = StoreOptions()
        readOnly.migrate = false
        #expect(throws: StoreError.schemaTooNew(found: 999, known: Migrator.knownVersion)) { try Store(path: path, options: readOnly) }
    }

    @Test func durabilityPragmas() throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        #expect(try store.writerPragma("synchronous") == "2") // FULL
        #expect(try store.writerPragma("journal_mode") == "wal")
        #expect(try store.writerPragma("foreign_keys") == "1")
        #expect(try store.writerPragma("auto_vacuum") == "2") // INCREMENTAL
        #expect(try store.writerPragma("temp_store") == "2") // savepoint journals in memory
        #expect(try store.read { db in try Int.fetchOne(db, sql: "PRAGMA busy_timeout") } ?? 0 >= 1000)
    }

    @Test func orChainsRewriteInListsOfLiterals() {
        #expect(Migrator.orChains("CHECK (ret IN ('FULL', 'HDRS'))") == "CHECK ((ret = 'FULL' OR ret = 'HDRS'))")
        #expect(Migrator.orChains("CHECK (state IN ('a',\n      'b')),\n x INTEGER CHECK (x IN (0, 1))")
                == "CHECK ((state = 'a' OR state = 'b')),\n x INTEGER CHECK ((x = 0 OR x = 1))")
        #expect(Migrator.orChains("WHERE id IN (SELECT id FROM t)") == "WHERE id IN (SELECT id FROM t)")
        #expect(Migrator.orChains("WHERE x IN (f(1), 2)") == "WHERE x IN (f(1), 2)")
        #expect(Migrator.orChains("no lists here") == "no lists here")
    }

    /// Migration 6: the hot tables' CHECKs and the partial indexes carry no
    /// IN list (no ephemeral table per row written), and still refuse what
    /// they refused.
    @Test func hotTablesHaveNoInLists() throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        for table in Migrator.hotTables {
            let sql = try store.read { db in try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE name = ?", arguments: [table]) } ?? ""
            #expect(!sql.contains(" IN ("), "\(table): \(sql)")
            #expect(sql.contains("CHECK"))
        }
        let partial = try store.read { db in
            try String.fetchAll(db, sql: "SELECT sql FROM sqlite_master WHERE name IN ('recipient_claim', 'recipient_live', 'recipient_failed')")
        }
        #expect(partial.count == 3)
        #expect(partial.allSatisfy { !$0.contains(" IN (") })
        #expect(partial.contains { $0.contains(StateSQL.claimable) } && partial.contains { $0.contains(StateSQL.live) }
                && partial.contains { $0.contains(StateSQL.failed) })
        let ephemeral = try store.writeDirect { db in
            try ["INSERT INTO recipient (message_id, address, domain, state, next_attempt_at, created_at) VALUES (1, 'a', 'b', 'queued', 1, 1)",
                 "UPDATE recipient SET state = 'delivered', final_at = 1 WHERE id = 1",
                 "INSERT INTO attempt (recipient_id, started_at, ended_at, outcome) VALUES (1, 1, 1, 'delivered')"].map { sql in
                try Row.fetchAll(db, sql: "EXPLAIN " + sql).filter { ($0["opcode"] as String) == "OpenEphemeral" }.count
            }
        }
        #expect(ephemeral == [0, 0, 0])
        #expect(try store.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") } == "ok")
    }

    /// A database of schema 5 with mail in it: migration 6 keeps every row,
    /// the writer connection reads the rewritten schema at once, and the
    /// rewritten CHECKs still refuse bad states; migration 7 builds its index
    /// from the rows there were.
    @Test func upgradeFromFiveKeepsRowsAndChecks() throws {
        let path = temporaryDatabase()
        try FileManager.default.createDirectory(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path, withIntermediateDirectories: true)
        let old = try DatabaseQueue(path: path)
        try old.write { db in
            try db.execute(sql: Migrator.bookkeeping)
            for m in Migrator.embedded.sorted(by: { $0.version < $1.version }) where m.version <= 5 {
                try db.execute(sql: m.sql)
                try Migrator.followUps[m.version]?(db)
                try db.execute(sql: "INSERT INTO schema_migration VALUES (?, ?, 0)", arguments: [m.version, m.name])
            }
            try insertAsOldSchemasDo("q5", recipients: 3, db)
        }
        try old.close()
        let store = try Store(path: path)
        defer { store.close() }
        #expect(try store.schemaVersion() == Migrator.knownVersion)
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM recipient WHERE \(StateSQL.claimable)") } == 3)
        // Migration 7: one index for arrival time and Message-ID, filled from the rows there were.
        let indexes = try store.read { db in try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'message'") }
        #expect(!indexes.contains("message_header_message_id") && indexes.contains("message_received_at"))
        #expect(try store.read { db in try String.fetchAll(db, sql: "SELECT name FROM pragma_index_info('message_received_at')") }
                == ["received_at", "header_message_id"])
        var byMessageID = HistoryFilter()
        byMessageID.headerMessageID = "m@x"
        #expect(try store.history(byMessageID).count == 3)
        let ephemeral = try store.writeDirect { db in
            try Row.fetchAll(db, sql: "EXPLAIN UPDATE recipient SET state = 'deferred' WHERE id = 1").filter { ($0["opcode"] as String) == "OpenEphemeral" }.count
        }
        #expect(ephemeral == 0)
        #expect(throws: (any Error).self) { try store.writeDirect { db in try db.execute(sql: "UPDATE recipient SET state = 'lost'") } }
        #expect(throws: (any Error).self) { try store.writeDirect { db in try db.execute(sql: "UPDATE message SET origin = 'mars'") } }
        #expect(try store.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") } == "ok")
    }

    /// The hot queries take their partial index (a query must contain the
    /// index's condition as written: StateSQL).
    @Test func hotQueriesUseTheirPartialIndexes() throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        func plan(_ sql: String) throws -> String {
            try store.read { db in try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql).map { $0["detail"] as String }.joined(separator: "; ") }
        }
        // The claim of one lane (domain and pool) seeks both; the due-lane query groups in index order (no sort).
        for pool in ["NULL", "'bulk'"] {
            let claim = try plan("SELECT id FROM recipient WHERE \(StateSQL.claimable) AND next_attempt_at <= 5 AND domain = 'x' AND pool IS \(pool) ORDER BY next_attempt_at, id LIMIT 20")
            #expect(claim.contains("recipient_claim (domain=? AND pool=? AND next_attempt_at<?)") && !claim.contains("TEMP B-TREE"), "\(claim)")
        }
        let due = try plan("SELECT domain, pool, min(next_attempt_at), sum(next_attempt_at <= 5) FROM recipient WHERE \(StateSQL.claimable) GROUP BY domain, pool")
        #expect(due.contains("recipient_claim") && !due.contains("TEMP B-TREE"), "\(due)")
        let live = try plan("SELECT domain, count(*) FROM recipient WHERE \(StateSQL.live) GROUP BY domain")
        #expect(live.contains("recipient_live"), "\(live)")
        let shape = try plan("SELECT * FROM queue_shape")
        #expect(shape.contains("recipient_live"), "\(shape)")
        let failed = try plan("SELECT count(*) FROM recipient r WHERE \(StateSQL.failed) AND r.state = 'bounced' AND r.final_at >= 1 AND r.final_at < 2")
        #expect(failed.contains("recipient_failed"), "\(failed)")
        // By Message-ID: a scan of the covering index, not of the table and its bodies.
        let byMessageID = try plan("SELECT id FROM message WHERE header_message_id = 'm@x'")
        #expect(byMessageID.contains("COVERING INDEX message_received_at"), "\(byMessageID)")
        let history = try plan("SELECT r.id FROM recipient r JOIN message m ON m.id = r.message_id WHERE m.id IN (SELECT id FROM message WHERE header_message_id = 'm@x')")
        #expect(history.contains("COVERING INDEX message_received_at") && !history.contains("SCAN m "), "\(history)")
        let window = try plan("SELECT id FROM message WHERE received_at >= 1 AND received_at < 2")
        #expect(window.contains("message_received_at (received_at>? AND received_at<?)"), "\(window)")
    }

    /// The values a CHECK in the schema allows for `column` of `table`.
    func allowed(_ store: Store, _ table: String, _ column: String) throws -> Set<String> {
        let sql = try store.read { db in try String.fetchOne(db, sql: "SELECT sql FROM sqlite_master WHERE name = ?", arguments: [table]) } ?? ""
        let pattern = try Regex("\\b\(column) = '([a-z_]+)'")
        return Set(sql.matches(of: pattern).map { String($0.output[1].substring!) })
    }

    /// The enums and the schema's CHECKs name the same values: a state or
    /// kind added to an enum without a migration (or the reverse) fails here.
    @Test func enumsMatchTheSchema() throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        #expect(try allowed(store, "recipient", "state").isSuperset(of: RecipientState.allCases.map(\.rawValue)))
        #expect(try allowed(store, "recipient", "state") == Set(RecipientState.allCases.map(\.rawValue)))
        #expect(try allowed(store, "attempt", "outcome") == Set(AttemptOutcome.allCases.map(\.rawValue)))
        #expect(try allowed(store, "event", "kind") == Set(EventKind.allCases.map(\.rawValue)))
        // Every kind is accepted; a misspelt one is refused.
        try store.writeDirect { db in
            for kind in EventKind.allCases { try db.execute(sql: "INSERT INTO event (at, kind) VALUES (1, ?)", arguments: [kind.rawValue]) }
        }
        #expect(throws: (any Error).self) { try store.writeDirect { db in try db.execute(sql: "INSERT INTO event (at, kind) VALUES (1, 'deliverd')") } }
        // An OR chain: no ephemeral table per event written.
        let ephemeral = try store.writeDirect { db in
            try Row.fetchAll(db, sql: "EXPLAIN INSERT INTO event (at, kind) VALUES (1, 'received')").filter { ($0["opcode"] as String) == "OpenEphemeral" }.count
        }
        #expect(ephemeral == 0)
        #expect(try store.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") } == "ok")
    }

    /// Issue 16: no recipient state, attempt outcome or event kind is
    /// spelt as a literal outside the enums and the migrations (a typo would
    /// compile and match nothing); SQL interpolates the enums.
    @Test func noStateOrKindLiteralsOutsideTheEnums() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources")
        let allowed: Set<String> = ["States.swift", "EmbeddedMigrations.swift", "Migrator.swift", "OpenAPIDocument.swift"]
        let names = Set(RecipientState.allCases.map(\.rawValue) + AttemptOutcome.allCases.map(\.rawValue) + EventKind.allCases.map(\.rawValue))
        let pattern = try Regex("[\"']([a-z_]+)[\"']")
        var found: [String] = []
        let files = FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil)!
        for case let file as URL in files where file.pathExtension == "swift" && !allowed.contains(file.lastPathComponent) {
            let text = try String(contentsOf: file, encoding: .utf8)
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                for m in line.matches(of: pattern) where names.contains(String(m.output[1].substring!)) {
                    found.append("\(file.lastPathComponent):\(n + 1): \(line.trimmingCharacters(in: .whitespaces))")
                }
            }
        }
        #expect(found.isEmpty, "\(found.joined(separator: "\n"))")
    }

    /// A database of schema 8: migration 9 keeps the log and checks new rows
    /// at once; one with a kind Tern never wrote is refused with the kinds named.
    @Test func upgradeToNineChecksEventKinds() throws {
        func database(at version: Int, extra: String?) throws -> String {
            let path = temporaryDatabase()
            try FileManager.default.createDirectory(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path, withIntermediateDirectories: true)
            let old = try DatabaseQueue(path: path)
            try old.write { db in
                try db.execute(sql: Migrator.bookkeeping)
                for m in Migrator.embedded.sorted(by: { $0.version < $1.version }) where m.version <= version {
                    try db.execute(sql: m.sql)
                    try Migrator.followUps[m.version]?(db)
                    try db.execute(sql: "INSERT INTO schema_migration VALUES (?, ?, 0)", arguments: [m.version, m.name])
                }
                try insertAsOldSchemasDo("q8", recipients: 2, db)
                if let extra { try db.execute(sql: "INSERT INTO event (at, kind) VALUES (1, ?)", arguments: [extra]) }
            }
            try old.close()
            return path
        }
        let store = try Store(path: try database(at: 8, extra: "auth_failed"))
        #expect(try store.schemaVersion() == Migrator.knownVersion)
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event") } == 2)
        #expect(throws: (any Error).self) { try store.writeDirect { db in try db.execute(sql: "INSERT INTO event (at, kind) VALUES (1, 'x')") } }
        #expect(try store.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") } == "ok")
        store.close()
        do {
            _ = try Store(path: try database(at: 8, extra: "greylisted"))
            Issue.record("a log with an unknown kind was migrated")
        } catch {
            #expect("\(error)".contains("greylisted"), "\(error)")
        }
    }

    @Test func schemaChecksStates() throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        let id = try store.writeDirect { db in try Store.insert(sampleMessage(recipients: 1), db) }
        // In flight without a lease, a final state without final_at, an unknown state: all refused.
        for bad in ["UPDATE recipient SET state='inflight' WHERE message_id=\(id)",
                    "UPDATE recipient SET state='delivered' WHERE message_id=\(id)",
                    "UPDATE recipient SET state='lost' WHERE message_id=\(id)",
                    "UPDATE recipient SET lease_owner='x' WHERE message_id=\(id)",
                    "INSERT INTO event (at, kind, detail) VALUES (1, 'x', 'not json')"] {
            #expect(throws: (any Error).self, "\(bad)") { try store.writeDirect { db in try db.execute(sql: bad) } }
        }
        try store.writeDirect { db in
            try db.execute(sql: "UPDATE recipient SET state='inflight', lease_owner='w', lease_expires_at=5 WHERE message_id=\(id)")
            try db.execute(sql: "UPDATE recipient SET state='delivered', lease_owner=NULL, lease_expires_at=NULL, final_at=6 WHERE message_id=\(id)")
        }
    }
}

@Suite struct IntakeWriteTests {
    @Test func messageRecipientsAndEventInOneTransaction() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        let id = try await store.insertMessage(sampleMessage("Q1", recipients: 3))
        let row = try #require(try store.read { db in try Row.fetchOne(db, sql: "SELECT * FROM message WHERE id = ?", arguments: [id]) })
        #expect(row["queue_id"] as String == "Q1")
        #expect(row["size"] as Int == 100)
        #expect(row["env_id"] as String == "env")
        #expect(row["ret"] as String == "HDRS")
        let rcpts = try store.read { db in try Row.fetchAll(db, sql: "SELECT * FROM recipient WHERE message_id = ? ORDER BY id", arguments: [id]) }
        #expect(rcpts.count == 3)
        #expect(rcpts.allSatisfy { ($0["state"] as String) == "queued" && ($0["next_attempt_at"] as Int64) == 1_000 })
        #expect(rcpts[0]["notify"] as String == "NEVER")
        #expect(rcpts[0]["orcpt"] as String == "rfc822;o@x")
        let detail = try #require(try store.read { db in try String.fetchOne(db, sql: "SELECT detail FROM event WHERE kind='received' AND message_id=?", arguments: [id]) })
        let json = try JSONSerialization.jsonObject(with: Data(detail.utf8)) as? [String: Any]
        #expect(json?["queue_id"] as? String == "Q1")
        #expect(json?["recipients"] as? Int == 3)
        let entries = try store.queueEntries()
        #expect(entries.count == 3)
        #expect(entries.first?.queueID == "Q1")
        #expect(try store.queueEntries(QueueFilter(domain: "other.test")).isEmpty)
        #expect(try store.stateCounts() == [.queued: 3])
    }

    /// A large body goes in as a start plus a tail written in place (BLOB
    /// I/O, no copy) and comes out whole the same way; a small one as a value.
    @Test func largeBodiesGoInAndOutByBlobIO() async throws {
        struct Tail: BodyTail {
            let bytes: [UInt8]
            var count: Int { bytes.count }
            func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try bytes.withUnsafeBytes(body) }
        }
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        let start = Data("Received: by us\r\n".utf8)
        let text = (0..<(Store.largeBody + 12_345)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        var large = sampleMessage("LARGE", recipients: 1)
        large.body = start
        large.tail = Tail(bytes: text)
        #expect(large.size == start.count + text.count)
        let id = try await store.insertMessage(large)
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT size FROM message WHERE id = ?", arguments: [id]) } == large.size)
        #expect(try store.read { db in try Data.fetchOne(db, sql: "SELECT body FROM message WHERE id = ?", arguments: [id]) } == start + Data(text))
        #expect(try store.message(id: id)?.body == start + Data(text))
        let detail = try #require(try store.read { db in try String.fetchOne(db, sql: "SELECT detail FROM event WHERE kind='received' AND message_id=?", arguments: [id]) })
        #expect(detail.contains("\"size\":\(large.size)"))
        // At the threshold and below: the column value, as before.
        let small = sampleMessage("SMALL", recipients: 1, size: Store.largeBody)
        let smallID = try await store.insertMessage(small)
        #expect(try store.message(id: smallID)?.body == small.body)
        // A tail of nothing is an empty body, not a failure.
        var empty = sampleMessage("EMPTY", recipients: 1, size: 0)
        empty.tail = Tail(bytes: [])
        let emptyID = try await store.insertMessage(empty)
        #expect(try store.message(id: emptyID)?.body == Data())
    }

    @Test func duplicateQueueIDFailsAloneAndLeavesNothing() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        _ = try await store.insertMessage(sampleMessage("DUP"))
        // The constraint error keeps its kind and names the column (intake draws a new id on it).
        await #expect { try await store.insertMessage(sampleMessage("DUP")) } throws: { error in
            guard case StoreError.constraint(let why) = error else { return false }
            return why.contains("message.queue_id")
        }
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM recipient") } == 2)
        #expect(try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM event") } == 1)
    }

    /// The writer binds values straight through SQLite's C API: empty text
    /// and empty blobs stay empty (not NULL), non-ASCII text and NULLs round-trip.
    @Test func directBindingKeepsEmptyValuesAndUnicode() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        var m = sampleMessage("EMPTY", recipients: 1, size: 0)
        m.mailFrom = ""
        m.helo = nil
        m.recipients = [NewRecipient(address: "jörg@bücher.test", domain: "xn--bcher-kva.test")]
        let id = try await store.insertMessage(m)
        let row = try #require(try store.read { db in
            try Row.fetchOne(db, sql: "SELECT mail_from, body, typeof(body), helo, size FROM message WHERE id = ?", arguments: [id])
        })
        #expect(row[0] as String == "" && row[1] as Data == Data() && row[2] as String == "blob")
        #expect(row[3] as String? == nil && row[4] as Int == 0)
        let rcpt = try store.read { db in try Row.fetchOne(db, sql: "SELECT address, domain, notify FROM recipient WHERE message_id = ?", arguments: [id]) }
        #expect(rcpt?[0] as String? == "jörg@bücher.test" && rcpt?[1] as String? == "xn--bcher-kva.test" && rcpt?[2] as String? == nil)
    }
}

@Suite struct JSONTests {
    /// What JSON.quote writes, Foundation's parser reads back as the same
    /// string: escapes, control characters, non-ASCII, empty.
    @Test func quotedStringsRoundTrip() throws {
        var samples = ["", "plain", "a\"b", "back\\slash", "line\r\nnext\ttab", "\u{01}\u{1f}\u{7f}", "jörg@bücher.test 😀",
                       "\"\\\"", "end\\"]
        var rng = SystemRandomNumberGenerator()
        let alphabet: [Character] = ["a", "\"", "\\", "\n", "\u{0}", "\u{1b}", "é", "😀", " ", "/"]
        for _ in 0..<500 {
            samples.append(String((0..<Int.random(in: 0...12, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }))
        }
        for s in samples {
            let text = JSON.array([.string(s)]).text
            let parsed = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String]
            #expect(parsed == [s], "\(text)")
        }
        #expect(JSON.string("a\"b\u{01}").text == #""a\"b\u0001""#)
        #expect(JSON.string("\u{1f}").text == #""\u001f""#)
    }

    /// The field-by-field writer spells an object as `JSON` does.
    @Test func objectWriterMatchesJSON() {
        var w = JSONObjectWriter()
        w.add("s", "a\"b")
        w.add("n", -42)
        w.add("big", Int.min)
        w.add("none", nil as String?)
        let expected = JSON.object([("s", .string("a\"b")), ("n", .int(-42)), ("big", .int(Int.min)), ("none", .null)]).text
        #expect(w.finish() == expected)
        #expect(expected == #"{"s":"a\"b","n":-42,"big":-9223372036854775808,"none":null}"#)
        var empty = JSONObjectWriter()
        #expect(empty.finish() == "{}")
        #expect(JSON.array([.int(0), .int64(7), .bool(true), .double(.nan)]).text == "[0,7,true,null]")
    }
}

/// Issue 20: the webhook outbox is filled by the event's own transaction,
/// only for subscribed kinds, and not at all without endpoints.
@Suite struct WebhookOutboxTests {
    @Test func theOutboxIsWrittenInTheEventsTransactionOnly() async throws {
        let store = try Store(path: temporaryDatabase())
        defer { store.close() }
        func outbox() throws -> [String] {
            try store.read { db in try String.fetchAll(db, sql: "SELECT o.endpoint || ':' || e.kind FROM webhook_outbox o JOIN event e ON e.id = o.event_id ORDER BY o.id") }
        }
        func trigger() throws -> Int {
            try store.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'webhook_outbox_fill'") ?? 0 }
        }
        #expect(try trigger() == 0) // no endpoint configured: events cost what they did
        _ = try await store.syncWebhooks([("a", "http://a.test/", [EventKind.delivered.rawValue, EventKind.bounced.rawValue]),
                                          ("b", "http://b.test/", [EventKind.delivered.rawValue])])
        #expect(try trigger() == 1)
        _ = try await store.write { db in
            try Store.addEvent(db, at: 1, kind: .delivered, messageID: nil, recipientID: nil, detail: nil)
            try Store.addEvent(db, at: 2, kind: .received, messageID: nil, recipientID: nil, detail: nil)
            try Store.addEvent(db, at: 3, kind: .bounced, messageID: nil, recipientID: nil, detail: nil)
            return 0
        }
        #expect(try outbox() == ["a:delivered", "b:delivered", "a:bounced"])
        // A transaction that rolls back leaves no outbox row.
        struct Abort: Error {}
        await #expect(throws: (any Error).self) {
            _ = try await store.write { db -> Int in
                try Store.addEvent(db, at: 4, kind: .delivered, messageID: nil, recipientID: nil, detail: nil)
                throw Abort()
            }
        }
        #expect(try outbox().count == 3)
        let batch = try store.webhookBatch(endpoint: "a", limit: 10)
        #expect(batch.map(\.kind) == ["delivered", "bounced"].map { EventKind(rawValue: $0)!.rawValue })
        try await store.webhookSent(endpoint: "a", upTo: batch[0].outboxID, count: 1, at: 5)
        #expect(try outbox() == ["b:delivered", "a:bounced"])
        // b leaves the configuration: its rows go; no endpoint at all: the trigger goes.
        #expect(try await store.syncWebhooks([("a", "http://a.test/", [EventKind.bounced.rawValue])]) == 1)
        #expect(try outbox() == ["a:bounced"])
        #expect(try await store.syncWebhooks([]) == 1)
        #expect(try trigger() == 0)
        _ = try await store.write { db in try Store.addEvent(db, at: 6, kind: .bounced, messageID: nil, recipientID: nil, detail: nil); return 0 }
        #expect(try outbox().isEmpty)
        let status = try store.webhookStatus()
        #expect(status.isEmpty)
    }
}
