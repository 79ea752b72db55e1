// Shared pieces of the reporting commands (history, stats, suppress):
// output formats, --since/--until parsing, CSV.

import ArgumentParser
import Foundation
import TernStore

enum ReportFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json, csv
}

/// `--since`/`--until`: `30m`, `24h`, `7d` (that long ago), `now`, a UTC date
/// `2026-11-29` or time `2026-11-29T10:00[:00]`, or Unix milliseconds.
enum TimeArgument {
    static func parse(_ text: String, now: Int64) throws -> Int64 {
        guard let t = value(text, now: now) else { throw fail(badTime(text), code: 64) }
        return t
    }

    static func badTime(_ text: String) -> String {
        "bad time '\(text)' (use 30m, 24h, 7d, now, 2026-11-29, 2026-11-29T10:00 (UTC) or Unix milliseconds)"
    }

    /// The time `text` names, or nil.
    static func value(_ text: String, now: Int64) -> Int64? {
        if text == "now" { return now }
        if let last = text.last, "smhdw".contains(last), let n = Int64(text.dropLast()), n >= 0 {
            let unit: Int64 = ["s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000][String(last)]!
            return now - n * unit
        }
        if text.count >= 12, let ms = Int64(text) { return ms }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        for format in ["yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd HH:mm", "yyyy-MM-dd"] {
            f.dateFormat = format
            if let d = f.date(from: text) { return Int64(d.timeIntervalSince1970 * 1000) }
        }
        return nil
    }

    enum Failure: Error {
        /// `text`, given for `option` (`since` or `until`), names no time.
        case bad(option: String, text: String)
        case untilNotAfterSince
    }

    /// The window, or why not (for the CLI's flags and the API's parameters alike).
    static func checkedWindow(since: String?, until: String?, defaultSince: String?, now: Int64) throws(Failure) -> TimeWindow? {
        func at(_ option: String, _ text: String) throws(Failure) -> Int64 {
            guard let t = value(text, now: now) else { throw .bad(option: option, text: text) }
            return t
        }
        guard let s = since ?? defaultSince else {
            if let u = until { return TimeWindow(since: TimeWindow.all.since, until: try at("until", u)) }
            return nil
        }
        let start = try at("since", s)
        var end = now + 1
        if let u = until { end = try at("until", u) }
        guard end > start else { throw .untilNotAfterSince }
        return TimeWindow(since: start, until: end)
    }

    static func window(since: String?, until: String?, defaultSince: String?, now: Int64) throws -> TimeWindow? {
        do {
            return try checkedWindow(since: since, until: until, defaultSince: defaultSince, now: now)
        } catch {
            switch error {
            case .bad(_, let text): throw fail(badTime(text), code: 64)
            case .untilNotAfterSince: throw fail("--until must be after --since", code: 64)
            }
        }
    }
}

/// RFC 4180: a header line, then one line per row; fields with commas, quotes or line breaks are quoted.
func renderCSV(header: [String], rows: [[String]]) -> String {
    func field(_ s: String) -> String {
        guard s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return s }
        return "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
    return ([header] + rows).map { $0.map(field).joined(separator: ",") + "\r\n" }.joined()
}

func render(_ format: ReportFormat, header: [String], rows: [[String]]) -> String {
    format == .csv ? renderCSV(header: header, rows: rows) : renderTable(header: header, rows: rows)
}

func time(_ ms: Int64?) -> String { ms.map { QueueFormatter.isoTime($0) } ?? "" }
func number(_ d: Double?, digits: Int = 1) -> String { d.map { String(format: "%.\(digits)f", $0) } ?? "" }
func percent(_ d: Double?) -> String { d.map { String(format: "%.1f%%", $0 * 100) } ?? "" }
func jsonNumber(_ d: Double?) -> JSON { d.map { JSON.double($0) } ?? .null }
func jsonInt(_ i: Int?) -> JSON { i.map { JSON.int($0) } ?? .null }
func jsonInt64(_ i: Int64?) -> JSON { i.map { JSON.int64($0) } ?? .null }
func jsonString(_ s: String?) -> JSON { s.map { JSON.string($0) } ?? .null }
