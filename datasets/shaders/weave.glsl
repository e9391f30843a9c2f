// Basket weave: two families of threads passing over and under each other, with thread shading.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = kd_rot(1.5708 * iParams[0].w) * fragCoord / iResolution.y * (4.0 + 12.0 * iParams[0].x) + iMouse.xy;
    vec2 id = floor(uv);
    vec2 f = fract(uv);
    bool over = mod(id.x + id.y, 2.0) < 1.0;
    float across = over ? f.y : f.x;
    float along = over ? f.x : f.y;
    float thread = sin(3.14159 * across);
    float gap = smoothstep(0.0, 0.1 + 0.1 * iParams[0].y, across) * smoothstep(1.0, 0.9 - 0.1 * iParams[0].y, across);
    vec3 warp = kd_palette(0.1 + 0.3 * iParams[0].z);
    vec3 weft = kd_palette(0.6);
    vec3 col = (over ? warp : weft) * (0.35 + 0.65 * thread) * (0.8 + 0.2 * sin(40.0 * along + iTime));
    fragColor = vec4(col * gap, 1.0);
}
