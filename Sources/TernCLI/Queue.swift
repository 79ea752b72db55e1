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
            bootstrapLogging(level: "warning")
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

    static func isoTime(_ ms: Int64) -> String { RFC5322Date.timestamp(millis: ms) }
}

/// Left-aligned columns separated by two spaces.
func renderTable(header: [String], rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in
            i == cells.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count)
        }.joined(separator: "  ").trimmingTrailingSpaces() + "\n"
    }
    return line(header) + rows.map(line).joined()
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var s = Substring(self)
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
