// `tern doctor`: a full health check of the database (read-only).

import ArgumentParser
import Foundation
import TernStore

struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the database: PRAGMA integrity_check, schema version, sizes, and states that should not exist.",
        discussion: "Exit status 0 when healthy, 1 when a problem was found. Safe while `tern serve` runs (read-only).")

    @OptionGroup var common: DatabaseOptions
    @Option(help: "table or json.") var format: OutputFormat = .table

    func run() throws {
        bootstrapLogging(level: "warning")
        let (store, settings) = try openExisting(common)
        defer { store.close() }
        let r: DoctorReport
        do { r = try store.doctor(now: nowMillis()) } catch { throw fail("\(error)", code: 74) }
        if format == .json {
            print(JSON.object([
                ("healthy", .bool(r.healthy)), ("integrity", .array(r.integrity.map(JSON.string))),
                ("foreign_key_violations", .int(r.foreignKeyViolations)), ("schema_version", .int(r.schemaVersion)),
                ("known_schema_version", .int(r.knownVersion)), ("journal_mode", .string(r.journalMode)),
                ("page_size", .int(r.pageSize)), ("page_count", .int(r.pageCount)), ("freelist_count", .int(r.freelistCount)),
                ("wal_bytes", .int(r.walBytes)),
                ("states", .object(r.states.sorted { $0.key < $1.key }.map { ($0.key, JSON.int($0.value)) })),
                ("inconsistencies", .object(r.inconsistencies.map { ($0.0, JSON.int($0.1)) })),
                ("expired_leases", .int(r.expiredLeases)),
            ]).text)
        } else {
            var out = "database:      \(settings.db)\n"
            out += "integrity:     \(r.integrity.joined(separator: "; "))\n"
            out += "foreign keys:  \(r.foreignKeyViolations == 0 ? "ok" : "\(r.foreignKeyViolations) violations")\n"
            out += "schema:        version \(r.schemaVersion) (this tern knows \(r.knownVersion))\n"
            out += "journal:       \(r.journalMode), WAL \(r.walBytes) bytes\n"
            out += "pages:         \(r.pageCount) × \(r.pageSize) bytes, \(r.freelistCount) free\n"
            out += "recipients:    " + (r.states.isEmpty ? "none" : r.states.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")) + "\n"
            for (name, n) in r.inconsistencies { out += "check:         \(n == 0 ? "ok  " : "FAIL") \(name)\(n == 0 ? "" : ": \(n)")\n" }
            if r.expiredLeases > 0 { out += "note:          \(r.expiredLeases) in flight with an expired lease (returned to the queue when tern serve starts)\n" }
            out += r.healthy ? "healthy\n" : "PROBLEMS FOUND\n"
            print(out, terminator: "")
        }
        if !r.healthy { throw ExitCode(1) }
    }
}
