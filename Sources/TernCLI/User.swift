// `tern user add|passwd|senders|remove|list`: accounts for SMTP AUTH on
// submission listeners. Passwords are read without echo from a terminal, or
// as one line from standard input otherwise, and stored only as PBKDF2 hashes.

import ArgumentParser
import Foundation
import TernAuth
import TernProtocol
import TernStore

struct User: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the accounts that may log in (SMTP AUTH) and submit mail.",
        discussion: """
            An account may use as MAIL FROM only its allowed senders: an address (alice@example.com), \
            a whole domain (@example.com) or * (anything). When --sender is not given and the name is an \
            address, the name itself is the one allowed sender. Changes apply to the next login; \
            a running `tern serve` needs no restart.
            """,
        subcommands: [Add.self, Passwd.self, Senders.self, Remove.self, List.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add an account; the password is prompted for (no echo), or read from standard input when it is not a terminal.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Login name (compared case-insensitively), usually an address.") var name: String
        @Option(name: .customLong("sender"), help: ArgumentHelp("An allowed sender: ADDRESS, @DOMAIN or *; repeatable.", valueName: "SENDER"))
        var senders: [String] = []

        func run() async throws {
            let allowed = try checkedSenders(senders.isEmpty ? defaultSenders(for: name) : senders)
            if allowed.isEmpty {
                FileHandle.standardError.write(Data("tern: warning: \(name) has no allowed sender and can only send with MAIL FROM:<>; add --sender\n".utf8))
            }
            let store = try openForAccounts(common)
            defer { store.close() }
            let password = try readNewPassword()
            let hash = PasswordHasher().hash(password)
            do {
                try await store.addAccount(name: try checkedName(name), passwordHash: hash, senders: allowed, now: nowMillis())
            } catch StoreError.constraint {
                throw fail("an account named \(name) exists (use `tern user passwd` or `tern user senders`)", code: 65)
            } catch let e as ExitCode {
                throw e
            } catch {
                throw fail("\(error)", code: 74)
            }
            print("added \(name) (may send as: \(sendersText(allowed)))")
        }
    }

    struct Passwd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set an account's password (prompted, or one line of standard input).")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Login name.") var name: String

        func run() async throws {
            let store = try openForAccounts(common)
            defer { store.close() }
            guard try store.account(named: name) != nil else { throw fail("no account named \(name)", code: 67) }
            let hash = PasswordHasher().hash(try readNewPassword())
            guard try await store.setAccountPassword(name: name, passwordHash: hash, now: nowMillis()) else {
                throw fail("no account named \(name)", code: 67)
            }
            print("password of \(name) changed")
        }
    }

    struct Senders: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Replace the senders an account may use.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Login name.") var name: String
        @Argument(help: "ADDRESS, @DOMAIN or *; none leaves only MAIL FROM:<>.") var senders: [String] = []

        func run() async throws {
            let allowed = try checkedSenders(senders)
            let store = try openForAccounts(common)
            defer { store.close() }
            guard try await store.setAccountSenders(name: name, senders: allowed, now: nowMillis()) else {
                throw fail("no account named \(name)", code: 67)
            }
            print("\(name) may send as: \(sendersText(allowed))")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an account.")
        @OptionGroup var common: DatabaseOptions
        @Argument(help: "Login name.") var name: String

        func run() async throws {
            let store = try openForAccounts(common)
            defer { store.close() }
            guard try await store.removeAccount(name: name) else { throw fail("no account named \(name)", code: 67) }
            print("removed \(name)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the accounts (never their passwords).")
        @OptionGroup var common: DatabaseOptions
        @Option(help: "table (for people) or json (one array, for machines).") var format: OutputFormat = .table

        func run() async throws {
            let store = try openForAccounts(common)
            defer { store.close() }
            let accounts = try store.accounts()
            if format == .json {
                print(JSON.array(accounts.map { a in
                    .object([("name", .string(a.name)), ("senders", .array(a.senders.map { .string($0) })),
                             ("created_at", .int64(a.createdAt)), ("updated_at", .int64(a.updatedAt))])
                }).text)
                return
            }
            let rows = accounts.map { a in
                [a.name, a.senders.isEmpty ? "<> only" : a.senders.joined(separator: ","),
                 QueueFormatter.isoTime(a.createdAt), QueueFormatter.isoTime(a.updatedAt)]
            }
            print(renderTable(header: ["NAME", "SENDERS", "CREATED (UTC)", "UPDATED (UTC)"], rows: rows), terminator: "")
            if accounts.isEmpty { print("(no accounts; add one with `tern user add NAME`)") }
        }
    }
}

/// Opens the existing database (`tern migrate` makes one before the first
/// `tern serve`, so that accounts can be set up first): like every command
/// but serve and migrate, `tern user` never creates a database.
func openForAccounts(_ common: DatabaseOptions) throws -> Store {
    try openExisting(common).0
}

func checkedName(_ name: String) throws -> String {
    guard !name.isEmpty, name.count <= 256, !name.contains(where: { $0.isWhitespace || $0.asciiValue.map { $0 < 32 } == true }) else {
        throw fail("bad account name '\(name)' (no spaces or control characters, at most 256 characters)", code: 64)
    }
    return name
}

func sendersText(_ senders: [String]) -> String { senders.isEmpty ? "<> only" : senders.joined(separator: ", ") }

func defaultSenders(for name: String) -> [String] {
    if case .success = AddressParser.parseMailbox(Substring(name), allowUTF8: true) { return [name] }
    return []
}

/// Each sender is `*`, `@domain` or an address.
func checkedSenders(_ senders: [String]) throws -> [String] {
    try senders.map { s in
        if s == "*" { return s }
        if s.hasPrefix("@"), AddressParser.isDomain(Substring(s.dropFirst()), allowUTF8: true) { return s.lowercased() }
        if case .success = AddressParser.parseMailbox(Substring(s), allowUTF8: true) { return s }
        throw fail("bad sender '\(s)' (use an address, @domain or *)", code: 64)
    }
}

/// The new password: asked twice without echo on a terminal, else one line of standard input.
func readNewPassword() throws -> String {
    if isatty(STDIN_FILENO) == 1 {
        let first = try readHidden("Password: ")
        let second = try readHidden("Again: ")
        guard first == second else { throw fail("the passwords differ; nothing changed", code: 65) }
        guard !first.isEmpty else { throw fail("empty password refused", code: 65) }
        return first
    }
    guard var line = readLine(strippingNewline: true) else { throw fail("no password on standard input", code: 66) }
    if line.hasSuffix("\r") { line.removeLast() }
    guard !line.isEmpty else { throw fail("empty password refused", code: 65) }
    return line
}

private func readHidden(_ prompt: String) throws -> String {
    FileHandle.standardError.write(Data(prompt.utf8))
    var saved = termios()
    tcgetattr(STDIN_FILENO, &saved)
    var quiet = saved
    quiet.c_lflag &= ~tcflag_t(ECHO)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)
    defer {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
        FileHandle.standardError.write(Data("\n".utf8))
    }
    guard let line = readLine(strippingNewline: true) else { throw fail("no password given", code: 66) }
    return line
}
