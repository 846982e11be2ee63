fn main() {
    println!("firstboot");
}
