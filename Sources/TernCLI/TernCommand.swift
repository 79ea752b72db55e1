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
            file; query it with the sqlite3 shell. Start with `tern serve` and see README.md.
            """,
        subcommands: [Serve.self, Migrate.self, Sendmail.self, Queue.self, History.self, Stats.self, Suppress.self, Prune.self, User.self, TLS.self, Doctor.self]
    )
    public init() {}
}

/// Options every command that opens the database takes.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("TOML configuration file; flags given here override it.", valueName: "FILE"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("SQLite database file (default ./tern-data/tern.sqlite; the folder is created).", valueName: "PATH"))
    var db: String?

    /// Defaults ← file ← these flags.
    func settings() throws -> TernSettings {
        var s = TernSettings()
        if let c = config { try s.apply(configFile: c) }
        if let d = db { s.db = d }
        return s
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
