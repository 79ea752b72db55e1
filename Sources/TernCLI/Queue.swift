// `tern queue …`: look at what waits in the queue.

import ArgumentParser
import Foundation
import TernMessage
import TernStore

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Inspect the queue.",
        subcommands: [List.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List recipients not yet delivered (queued, in flight, deferred, held), oldest first.")

        @OptionGroup var common: DatabaseOptions

        @Option(help: "table (for people) or json (one array, for machines).")
        var format: OutputFormat = .table

        @Option(help: "Only recipients in this state (queued, inflight, deferred, held, delivered, bounced, expired, suppressed).")
        var state: String?

        @Option(help: "Only recipients of this domain.")
        var domain: String?

        @Option(help: "At most this many rows.")
        var limit: Int = 1000

        func run() throws {
            let valid = ["queued", "inflight", "deferred", "held", "delivered", "bounced", "expired", "suppressed"]
            if let s = state, !valid.contains(s) {
                throw fail("unknown state '\(s)' (one of \(valid.joined(separator: ", ")))", code: 64)
            }
            let settings = try common.settings()
            guard FileManager.default.fileExists(atPath: settings.db) else {
                throw fail("no database at \(settings.db) (start `tern serve` or run `tern migrate` first)", code: 66)
            }
            var options = StoreOptions()
            options.migrate = false
            let entries: [QueueEntry]
            do {
                let store = try Store(path: settings.db, options: options)
                entries = try store.queueEntries(QueueFilter(state: state, domain: domain, limit: limit))
                store.close()
            } catch {
                throw fail("\(error)", code: 74)
            }
            print(format == .json ? QueueFormatter.json(entries) : QueueFormatter.table(entries), terminator: "")
        }
    }
}

/// Renders queue entries for people and machines.
public enum QueueFormatter {
    public static func json(_ entries: [QueueEntry]) -> String {
        JSON.array(entries.map { e in
            JSON.object([
                ("queue_id", .string(e.queueID)), ("received_at", .int64(e.receivedAt)),
                ("received", .string(isoTime(e.receivedAt))), ("from", .string(e.mailFrom)), ("size", .int(e.size)),
                ("recipient_id", .int64(e.recipientID)), ("recipient", .string(e.address)), ("domain", .string(e.domain)),
                ("state", .string(e.state)), ("attempts", .int(e.attempts)), ("next_attempt_at", .int64(e.nextAttemptAt)),
                ("last_code", e.lastCode.map { .int($0) } ?? .null),
                ("last_enhanced", e.lastEnhanced.map { .string($0) } ?? .null),
                ("last_text", e.lastText.map { .string($0) } ?? .null),
            ])
        }).text + "\n"
    }

    public static func table(_ entries: [QueueEntry]) -> String {
        let header = ["QUEUE ID", "RECEIVED (UTC)", "SIZE", "FROM", "RECIPIENT", "STATE", "TRIES", "LAST REPLY"]
        let rows = entries.map { e in
            [e.queueID, isoTime(e.receivedAt), String(e.size), e.mailFrom.isEmpty ? "<>" : e.mailFrom, e.address, e.state,
             String(e.attempts), [e.lastCode.map(String.init), e.lastEnhanced, e.lastText].compactMap { $0 }.joined(separator: " ")]
        }
        return renderTable(header: header, rows: rows) + "\(entries.count) recipient\(entries.count == 1 ? "" : "s")\n"
    }

    static func isoTime(_ ms: Int64) -> String { utcTimestamp(millis: ms) }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
func utcTimestamp(millis: Int64) -> String {
    let secs = millis / 1000
    let days = secs / 86400, sod = secs % 86400
    let (y, m, d) = civilFromDays(days)
    func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(y)-\(two(m))-\(two(d)) \(two(sod / 3600)):\(two(sod / 60 % 60)):\(two(sod % 60))"
}

func civilFromDays(_ z0: Int64) -> (Int64, Int64, Int64) {
    let z = z0 + 719468
    let era = (z >= 0 ? z : z - 146096) / 146097
    let doe = z - era * 146097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
}

/// Left-aligned columns separated by two spaces.
func renderTable(header: [String], rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in
            i == cells.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count)
        }.joined(separator: "  ") + "\n"
    }
    return line(header) + rows.map(line).joined()
}
