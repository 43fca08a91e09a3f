//! netns test harness
