import ArgumentParser
import SwitchyardSupport

/// The commands every Switchyard binary has: `switchyard` adds the HTTP server to them, and
/// `switchyard-worker` (the binary that goes to a GPU machine or another host, without the server
/// and the full Foundation it brings) is exactly them.
public enum SwitchyardCommands {
    public static let compute: [any ParsableCommand.Type] = [
        Generate.self, Chat.self, Logits.self, Tokenize.self, Detokenize.self, Template.self, Info.self, Profile.self,
        PlanCommand.self, Bench.self, PerplexityCommand.self, Quantize.self, AttentionWorkerCommand.self, AttentionStatusCommand.self, ExpertWorkerCommand.self,
        ExpertStatusCommand.self,
    ]

    /// Parses the arguments and runs the command. A value a flag does not accept (a range, a
    /// spelling) is one `error:` line and exit status 1, as every other bad input is; help and
    /// the command's own exit codes are ArgumentParser's.
    public static func main<Root: ParsableCommand>(_ root: Root.Type) async {
        // A reader that goes away (`switchyard generate ... | head`) ends the output, not the process.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try root.parseAsRoot()
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            if root.exitCode(for: error) == .validationFailure {
                let message = root.message(for: error).split(separator: "\n").joined(separator: " ")
                printError("error: " + message)
                exit(1)
            }
            root.exit(withError: error)
        }
    }
}

/// A number from a flag, checked before any arithmetic.
public func checkRange(_ value: Int?, _ flag: String, _ range: ClosedRange<Int>) throws {
    if let value, !range.contains(value) {
        throw ValidationError("\(flag) must be between \(range.lowerBound) and \(range.upperBound), found \(value)")
    }
}

/// A real number from a flag: finite and in range.
func checkRange(_ value: Float, _ flag: String, _ range: ClosedRange<Float>) throws {
    guard value.isFinite, range.contains(value) else {
        throw ValidationError("\(flag) must be a number between \(range.lowerBound) and \(range.upperBound), found \(value)")
    }
}

/// The longest context any command takes, and the most tokens one may generate: the config's own
/// limit on positions.
let positionLimit = 1 << 24
