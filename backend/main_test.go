package backend

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when any test leaves a goroutine behind: every
// goroutine the Server starts must be stopped and waited for by its owner.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
