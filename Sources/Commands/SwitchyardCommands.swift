import ArgumentParser
import SwitchyardSupport

/// The commands every Switchyard binary has: `switchyard` adds the HTTP server to them, and
/// `switchyard-worker` (the binary that goes to a GPU machine or another host, without the server
/// and the full Foundation it brings) is exactly them.
public enum SwitchyardCommands {
    public static let compute: [any ParsableCommand.Type] = [
        Generate.self, Chat.self, Logits.self, Tokenize.self, Detokenize.self, Template.self, Info.self, Profile.self,
        PlanCommand.self, Bench.self, Quantize.self,
    ]

    /// Process-wide settings before any command runs: a reader that goes away
    /// (`switchyard generate ... | head`) ends the output, not the process.
    public static func prepareProcess() {
        signal(SIGPIPE, SIG_IGN)
    }
}
