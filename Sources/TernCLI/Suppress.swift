// `tern suppress add|remove|list|import|export`: the suppression list.

import ArgumentParser
import Foundation
import TernProtocol
import TernStore

struct Suppress: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the suppression list: addresses Tern will not deliver to.",
        discussion: """
            A queued recipient whose address is on the list becomes `suppressed` (final, with an event \
            and a failure DSN as its NOTIFY asks) instead of being tried. Hard bounces of the categories \
            in [delivery] suppress_categories (by default invalid_recipient and inactive_mailbox) add the \
            address automatically ([delivery] suppress_on_hard_bounce). Addresses compare case-insensitively.
            """,
        subcommands: [Add.self, Remove.self, List.self, Import.self, Export.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add addresses (or replace their entries).")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Addresses.") var addresses: [String]
        @Option(help: "Why (shown in the DSN and the event).") var reason = "added by operator"
        @Option(help: ArgumentHelp("Remove the entry after this long: 30d, 12h, or a time (default never).", valueName: "DURATION"))
        var expires: String?

        func run() async throws {
            guard !addresses.isEmpty else { throw fail("give at least one address", code: 64) }
            let now = nowMillis()
            let expiry = try expires.map { try expiryTime($0, now: now) }
            let entries = try addresses.map { Suppression(address: try checkedAddress($0), reason: reason, source: "manual", createdAt: now, expiresAt: expiry) }
            try await save(entries, common, verb: RecipientState.suppressed.rawValue)
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove addresses from the list.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Addresses.") var addresses: [String]

        func run() async throws {
            let (store, _) = try openExisting(common)
            defer { store.close() }
            let n = try await store.removeSuppressions(addresses.map { AddressParser.canonical($0) ?? $0 })
            print("removed \(n) of \(addresses.count)")
            if n < addresses.count { throw ExitCode(67) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List entries, newest first.")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "Only addresses containing this text.") var search: String?
        @Option(help: "At most this many.") var limit = 1000
        @Option(help: "table, json or csv.") var format: ReportFormat = .table

        func run() async throws {
            let (store, _) = try openExisting(common)
            defer { store.close() }
            let entries = try store.suppressions(containing: search, limit: max(1, limit))
            print(SuppressionFormatter.render(entries, format: format), terminator: format == .json ? "\n" : "")
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add every address in FILE (one per line, or CSV whose first column is the address; '-' reads stdin).",
            discussion: "Blank lines, lines starting with #, and a header line 'address,…' are skipped. A bad address stops the import before anything is written.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "File.") var file: String
        @Option(help: "Reason for the imported entries.") var reason = "imported"

        func run() async throws {
            let now = nowMillis()
            let entries = try readAddressFile(file).map { Suppression(address: $0, reason: reason, source: "import", createdAt: now) }
            try await save(entries, common, verb: "imported")
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the whole list as CSV (address,reason,source,created_at,expires_at) or JSON.")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "csv or json.") var format: ReportFormat = .csv

        func run() async throws {
            let (store, _) = try openExisting(common)
            defer { store.close() }
            let entries = try store.suppressions()
            print(SuppressionFormatter.render(entries, format: format == .table ? .csv : format), terminator: format == .json ? "\n" : "")
        }
    }
}

/// Adds entries in one transaction and says how many were new.
private func save(_ entries: [Suppression], _ common: DatabaseOptions, verb: String) async throws {
    let (store, _) = try openExisting(common)
    defer { store.close() }
    let added = try await store.addSuppressions(entries)
    print("\(verb) \(entries.count) address\(entries.count == 1 ? "" : "es") (\(added) new)")
}

/// The addresses of an import file in canonical form: one per line, or CSV
/// whose first column is the address; '-' reads stdin. Blank lines, `#`
/// lines and a header line `address,…` are skipped; a bad address stops
/// the import (exit 65) before anything is written.
func readAddressFile(_ file: String) throws -> [String] {
    let text: String
    if file == "-" {
        text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
    } else {
        guard let d = FileManager.default.contents(atPath: file) else { throw fail("cannot read \(file)", code: 66) }
        text = String(decoding: d, as: UTF8.self)
    }
    var addresses: [String] = []
    for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
        let line = raw.trimmingCharacters(in: .whitespaces)
        if line.isEmpty || line.hasPrefix("#") || line.lowercased().hasPrefix("address,") || line.lowercased() == "address" { continue }
        let first = String(line.split(separator: ",", maxSplits: 1).first ?? "").trimmingCharacters(in: CharacterSet(charactersIn: "\" "))
        guard let canonical = AddressParser.canonical(first) else {
            throw fail("\(file):\(n + 1): bad address '\(first)'; nothing imported", code: 65)
        }
        addresses.append(canonical)
    }
    return addresses
}

/// The address in the one form the suppression list keys by (domain as a
/// lower-case A-label), or exit 65.
func checkedAddress(_ s: String) throws -> String {
    guard let c = AddressParser.canonical(s) else { throw fail("bad address '\(s)'", code: 65) }
    return c
}

/// `30d`-style durations from now, or an absolute time.
func expiryTime(_ text: String, now: Int64) throws -> Int64 {
    guard let t = expiryValue(text, now: now) else { throw fail(TimeArgument.badTime(text), code: 64) }
    return t
}

/// As `expiryTime`, nil for a text that names no time.
func expiryValue(_ text: String, now: Int64) -> Int64? {
    guard let t = TimeArgument.value(text, now: now) else { return nil }
    if let last = text.last, "smhdw".contains(last), Int64(text.dropLast()) != nil {
        return 2 * now - t // the same distance ahead
    }
    return t
}

enum SuppressionFormatter {
    static func render(_ entries: [Suppression], format: ReportFormat) -> String {
        switch format {
        case .json:
            return JSON.array(entries.map { e in
                .object([("address", .string(e.address)), ("reason", .string(e.reason)), ("source", .string(e.source)),
                         ("created_at", .int64(e.createdAt)), ("expires_at", jsonInt64(e.expiresAt))])
            }).text
        case .csv:
            return renderCSV(header: ["address", "reason", "source", "created_at", "expires_at"],
                             rows: entries.map { [$0.address, $0.reason, $0.source, time($0.createdAt), time($0.expiresAt)] })
        case .table:
            return renderTable(header: ["ADDRESS", "SOURCE", "ADDED (UTC)", "EXPIRES", "REASON"],
                               rows: entries.map { [$0.address, $0.source, time($0.createdAt), $0.expiresAt.map { time($0) } ?? "never", $0.reason] })
                + "\(entries.count) entr\(entries.count == 1 ? "y" : "ies")\n"
        }
    }
}
