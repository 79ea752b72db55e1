// `tern recipients add|remove|list|import|catch-all`: the valid recipients
// of relay domains, checked at RCPT (Postfix's relay_recipient_maps).

import ArgumentParser
import Foundation
import TernProtocol
import TernStore

struct Recipients: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the valid recipients of relay domains (unknown ones are refused at RCPT with 550 5.1.1).",
        discussion: """
            A relay domain that has listed recipients, or whose catch-all is set off, accepts only \
            the listed addresses; the rest are refused during the SMTP session instead of being \
            accepted and bounced later to a sender who may be forged (backscatter). A relay domain \
            with neither accepts every recipient. `catch-all DOMAIN on` accepts every recipient \
            of DOMAIN again without forgetting the list. A running `tern serve` picks changes up \
            within 5 seconds. Addresses compare case-insensitively, domains as A-labels.
            """,
        subcommands: [Add.self, Remove.self, List.self, Import.self, CatchAll.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add valid recipients.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Addresses.") var addresses: [String]

        func run() async throws {
            guard !addresses.isEmpty else { throw fail("give at least one address", code: 64) }
            try await addRecipients(try addresses.map(checkedAddress), common, verb: "added")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove recipients from the list.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Addresses.") var addresses: [String]

        func run() async throws {
            let (store, _) = try openExisting(common)
            defer { store.close() }
            let n = try await store.removeRelayRecipients(addresses.map { AddressParser.canonical($0) ?? $0 })
            print("removed \(n) of \(addresses.count)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the valid recipients (and each domain's catch-all setting).")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "Only this domain.") var domain: String?
        @Option(help: "table or json.") var format: ReportFormat = .table

        func run() async throws {
            let (store, _) = try openExisting(common)
            defer { store.close() }
            let d = domain.map { IDNA.toASCII($0) ?? $0.lowercased() }
            let addresses = try store.relayRecipients(domain: d)
            let policies = try store.relayDomainPolicies().filter { d == nil || $0.key == d }
            if format == .json {
                print(JSON.object([
                    ("recipients", .array(addresses.map { .string($0) })),
                    ("catch_all", .object(policies.sorted { $0.key < $1.key }.map { ($0.key, .bool($0.value)) })),
                ]).text)
                return
            }
            for a in addresses { print(a.escapingControlCharacters()) }
            for (domain, on) in policies.sorted(by: { $0.key < $1.key }) { print("# catch-all \(domain): \(on ? "on" : "off")") }
            print("\(addresses.count) recipient\(addresses.count == 1 ? "" : "s")")
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add every address in FILE (one per line, or CSV whose first column is the address; '-' reads stdin).",
            discussion: "Blank lines, lines starting with #, and a header line 'address,…' are skipped. A bad address stops the import before anything is written.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "File.") var file: String

        func run() async throws {
            try await addRecipients(try readAddressFile(file), common, verb: "imported")
        }
    }

    struct CatchAll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "catch-all",
            abstract: "on: accept any recipient of DOMAIN; off: only listed ones (even none); default: forget the setting.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Domain.") var domain: String
        @Argument(help: "on, off or default.") var setting: String

        func run() async throws {
            let value: Bool?
            switch setting {
            case "on": value = true
            case "off": value = false
            case "default": value = nil
            default: throw fail("say on, off or default", code: 64)
            }
            guard let d = IDNA.toASCII(domain) else { throw fail("bad domain '\(domain)'", code: 65) }
            let (store, _) = try openExisting(common)
            defer { store.close() }
            try await store.setCatchAll(d, value, now: nowMillis())
            print("catch-all for \(d): \(setting)")
        }
    }
}

/// Adds canonical addresses in one transaction and says how many were new.
private func addRecipients(_ addresses: [String], _ common: DatabaseOptions, verb: String) async throws {
    let (store, _) = try openExisting(common)
    defer { store.close() }
    let added = try await store.addRelayRecipients(addresses, now: nowMillis())
    print("\(verb) \(addresses.count) address\(addresses.count == 1 ? "" : "es") (\(added) new)")
}
