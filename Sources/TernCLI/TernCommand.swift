// `tern`: the command-line entry. Each subcommand is thin: it resolves
// settings and calls the store, intake or listener.

import ArgumentParser
import Foundation
import Logging
import Synchronization

private let loggingBootstrapped = Mutex(false)

public struct TernCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "tern",
        abstract: "Tern, a mail transfer agent whose queue is a SQLite database.",
        discussion: """
            Every message, recipient state, delivery attempt and event is a row in one SQLite
            file; query it with the sqlite3 shell. Start with `tern serve` and see README.md and docs/.
            """,
        subcommands: [Serve.self, Migrate.self, Sendmail.self, Queue.self, History.self, Stats.self, Suppress.self, Recipients.self, Prune.self, User.self, TLS.self, Doctor.self, ConfigCommand.self, DKIMCommand.self, AuthCommand.self, ShapingCommand.self, WarmupCommand.self, BlocklistCommand.self, APICommand.self, WebhooksCommand.self]
    )
    public init() {}
}

/// Options every command that opens the database takes.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("TOML configuration file; flags given here override it.", valueName: "FILE"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("SQLite database file. Default: $TERN_DB, else the config file's db, else /var/lib/tern/tern.sqlite for root and ~/.local/share/tern/tern.sqlite for others. Only serve and migrate create it.", valueName: "PATH"))
    var db: String?

    /// Defaults ← file ← $TERN_DB ← these flags; the database path made absolute.
    func settings() throws -> TernSettings {
        var s = TernSettings()
        var fromFile: String? = nil
        if let c = config {
            let before = s.db
            try s.apply(configFile: c)
            if s.db != before { fromFile = c }
        }
        if let env = ProcessInfo.processInfo.environment["TERN_DB"], !env.isEmpty {
            s.db = env
            fromFile = nil
            s.origins["db"] = "environment TERN_DB"
        }
        if let d = db {
            s.db = d
            fromFile = nil
            s.origins["db"] = "flag --db"
        }
        s.db = DatabaseOptions.absolute(s.db, relativeTo: fromFile)
        return s
    }

    /// Every command must find the database `serve` uses, wherever it runs:
    /// a relative path is taken from the directory it is given in (the
    /// config file's for its `db`, the current one for flags and $TERN_DB).
    static func absolute(_ path: String, relativeTo configFile: String?) -> String {
        if path.hasPrefix("/") { return URL(fileURLWithPath: path).standardizedFileURL.path }
        let base = configFile.map { URL(fileURLWithPath: $0).deletingLastPathComponent() }
            ?? URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        return base.appendingPathComponent(path).standardizedFileURL.path
    }

    /// The built-in database path: absolute, so `tern sendmail` run from any
    /// directory queues where `tern serve` reads.
    static var defaultDatabase: String {
        if getuid() == 0 { return "/var/lib/tern/tern.sqlite" }
        let env = ProcessInfo.processInfo.environment
        let data = env["XDG_DATA_HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil }
            ?? (env["HOME"].map { $0 + "/.local/share" } ?? NSHomeDirectory() + "/.local/share")
        return data + "/tern/tern.sqlite"
    }
}

/// Refuses a database that other users can read (issue 15): every message
/// and every password hash is in it. `allow` is the operator's explicit yes.
func checkDatabasePrivacy(_ path: String, allow: Bool, logger: Logger) throws {
    for file in [path, path + "-wal", path + "-shm"] {
        guard let mode = (try? FileManager.default.attributesOfItem(atPath: file))?[.posixPermissions] as? Int else { continue }
        if mode & 0o077 != 0 {
            let text = "\(file) is readable by other users (mode \(String(mode, radix: 8))): it holds every message and password hash; chmod 600 it"
            if allow {
                logger.warning("\(text) (allowed by --allow-shared-db)")
            } else {
                logger.warning("\(text), or start with --allow-shared-db")
                throw fail("\(text), or start with --allow-shared-db", code: 77) // EX_NOPERM
            }
        }
    }
}

/// Sets up logging to stderr once per process (later calls do nothing).
func bootstrapLogging(level: String) {
    guard loggingBootstrapped.withLock({ done in defer { done = true }; return !done }) else { return }
    let lvl = Logger.Level(rawValue: level) ?? .info
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = lvl
        return h
    }
}

func fail(_ message: String, code: Int32) -> ExitCode {
    FileHandle.standardError.write(Data("tern: \(message)\n".utf8))
    return ExitCode(code)
}
